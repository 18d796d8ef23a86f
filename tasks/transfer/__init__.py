"""The transfer stage: structure surgery on a model URI (drop or insert blocks, add tokens, a new head), registered as a
new version. The spec is in `spec`, the surgery and the body (`run`) in `surgery`."""
