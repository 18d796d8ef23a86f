"""Weight averaging: the element-wise mean of models that share an architecture and an initialisation (a model soup,
Wortsman et al. 2022), or of one run's last checkpoints (checkpoint averaging)."""

from pathlib import Path

import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from tasks import storage
from tasks.errors import UserError
from tasks.train import checkpoints, work_dir

State = dict[str, torch.Tensor]


def mean(states: list[State]) -> State:
    """The element-wise mean of state dicts with the same names and shapes, each tensor in its own dtype; integer
    buffers (position ids) are the same in every model and are taken from the first."""
    out = {}
    for name, first in states[0].items():
        if not first.is_floating_point():
            out[name] = first.clone()
            continue
        # in float32 at least: a bf16 sum of many soups' weights would round away what it averages
        stacked = torch.stack([s[name].to(torch.promote_types(first.dtype, torch.float32)) for s in states])
        out[name] = stacked.mean(0).to(first.dtype)
    return out


def weights(folder: Path) -> State:
    """The tensors of a saved model or checkpoint folder: every `*.safetensors` file in it (shards included; LoRA's
    `adapter_model.safetensors`); safetensors only, never a pickle."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{folder} holds no *.safetensors weights: only safetensors models can be averaged")
    state = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def mismatch(states: dict[str, State]) -> str | None:
    """Why these models cannot be averaged (a parameter one lacks, or of another shape), or None; keyed by model URI."""
    (first, reference), *others = states.items()
    for uri, state in others:
        missing, extra = sorted(set(reference) - set(state)), sorted(set(state) - set(reference))
        if missing or extra:
            return f"{uri} {'lacks ' + missing[0] if missing else 'has an extra ' + extra[0]} that {first} has"
        shaped = next((k for k in reference if reference[k].shape != state[k].shape), None)
        if shaped:
            return (
                f"{uri}'s {shaped} is {tuple(state[shaped].shape)} where {first}'s is {tuple(reference[shaped].shape)}"
            )
    return None


def load_into(model: torch.nn.Module, state: State) -> None:
    """Put averaged weights into a model (a PeftModel takes its adapter's); a name the model lacks is a bug, not a skip."""
    if hasattr(model, "peft_config") and any("lora_" in k for k in state):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)
        return
    # strict=False: save_pretrained drops tied weights (a decoder's output matrix is its embedding)
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"averaged weights the model does not have: {result.unexpected_keys[:3]}")


def average_last(model: torch.nn.Module, k: int, ctx) -> list[str]:
    """Replace the model's weights with the mean of the stage's last `k` published checkpoints (fewer when training
    saved fewer); returns their names. They are read from the artifact store, so a resumed run averages the same ones."""
    found = storage.list_complete(checkpoints(ctx))[-k:]
    folders = [storage.fetch_dir(uri, work_dir(ctx)) for uri in found]
    names = [uri.rstrip("/").rsplit("/", 1)[-1] for uri in found]
    if len(found) < 2:
        print(
            f"finetune.average_last: only {', '.join(names) or 'no checkpoint'} to average; keeping the best checkpoint"
        )
        return names
    load_into(model, mean([weights(f) for f in folders]))
    MlflowClient().set_tag(ctx.run_id, "multistep.averaged_checkpoints", ",".join(names))
    print(f"finetune: the registered weights are the mean of {', '.join(names)} (finetune.average_last={k})")
    return names
