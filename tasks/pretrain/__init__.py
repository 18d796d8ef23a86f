"""The pretrain stage: a language model from scratch or from a model URI, trained on a prepared dataset's packed blocks.
The spec is in `spec`, the body (`run`, and the `trainer` each torchrun rank builds) in `stage`."""
