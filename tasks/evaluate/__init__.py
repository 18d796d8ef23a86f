"""Evaluation: the evaluate stage (`stage`: a language model's perplexity next to a unigram baseline), and `scoring`: any
model URI on any dataset's test rows, side by side, which the gate and `multistep evaluate` use. The spec is in `spec`."""
