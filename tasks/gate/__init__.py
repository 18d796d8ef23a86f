"""The gate stage: score the challenger and the champion on the same test rows, decide by a policy, move `@champion`.
With no champion, the challenger must beat the task's trivial baseline (`baseline`) on those rows instead.
The spec is in `spec`, the policy and the alias's compare-and-set in `promotion`, the body (`run`) in `stage`."""
