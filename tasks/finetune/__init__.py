"""The finetune stage: classification or instruction SFT from any model URI, fully, with LoRA, or head-only.

The specs are in `spec`; the body is `stage.run`, which hands the dataset's task to `classify`, `sft` or `reasoning` (math).
"""
