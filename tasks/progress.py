"""Training progress as lines in the Prefect flow run's log: the loss every `log_every` steps and at the last step,
each evaluation during training (each checkpoint: tasks/callbacks.py PublishCheckpoints, once it is in the store)."""

from transformers import TrainerCallback


def say(text: str) -> None:
    """One line in the current Prefect run's log (sent to the API, shown on the run's page); on stdout outside a run.

    A torchrun rank has no run of its own: its stdout reaches the stage process, which prints each line into its run.
    """
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.logging import get_run_logger

    if FlowRunContext.get() or TaskRunContext.get():
        get_run_logger().info(text)
    else:
        print(text, flush=True)


class Progress(TrainerCallback):
    """A log line for each logged loss, checkpoint and evaluation, said by rank 0 alone.

    Added on every torchrun rank all the same: each must ask for the last step's log, where Trainer gathers the loss
    across ranks (a rank that skipped that gather failed the others' training)."""

    def __init__(self, stage: str):
        self.stage = stage
        self.training = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True

    def on_train_end(self, args, state, control, **kwargs):
        # The stage's own scoring after training (validation, test) says its metrics in one line of its own: Trainer's
        # evaluate would otherwise print them again here, under the last step's number, as if test were scored there.
        self.training = False

    def on_step_end(self, args, state, control, **kwargs):
        # The last step's loss always: a run shorter than log_every would have no curve at all.
        if state.global_step >= state.max_steps:
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if state.is_world_process_zero and "loss" in logs:
            lr = f", lr {logs['learning_rate']:.3g}" if "learning_rate" in logs else ""
            say(f"{self.stage}: step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f}{lr}")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.training and state.is_world_process_zero and metrics:
            shown = ", ".join(
                f"{k} {v:.4g}"
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second", "epoch"))
            )
            say(f"{self.stage}: step {state.global_step}/{state.max_steps} evaluation: {shown}")
