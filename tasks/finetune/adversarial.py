"""Adversarial training on the input embeddings (FGM, PGD): a Trainer whose loss adds the loss under a worst-case nudge."""

from contextlib import contextmanager

import torch
from transformers import Trainer

from tasks.errors import UserError
from tasks.finetune.spec import AdversarialSpec


def trainer_class(spec: AdversarialSpec | None, base: type[Trainer] = Trainer) -> type[Trainer]:
    """`base` itself without a spec, else a subclass of it that trains on clean + weight × adversarial loss."""
    if spec is None:
        return base

    class AdversarialTrainer(base):
        # Running sums of the (clean, adversarial) losses since the last log, and the step that log was at.
        _adv_parts: tuple[torch.Tensor, ...] = ()
        _adv_sums: torch.Tensor | None = None
        _adv_logged_step: int | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # Evaluation (prediction_step runs under no_grad) scores the clean inputs exactly as the base Trainer does.
            if not (model.training and torch.is_grad_enabled()):
                return super().compute_loss(
                    model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
                )
            layer = _embedding_layer(self.accelerator.unwrap_model(model))
            mask = inputs.get("attention_mask")

            def loss_with(delta):
                # A fresh dict each pass: the base may pop "labels" from it (label smoothing, compute_loss_func).
                with _added(layer, delta) as seen:
                    loss, outputs = super(AdversarialTrainer, self).compute_loss(
                        model, dict(inputs), return_outputs=True, num_items_in_batch=num_items_in_batch
                    )
                if seen.output is None:
                    raise UserError(_NOT_CALLED.format(type(self.accelerator.unwrap_model(model)).__name__))
                return loss, outputs, seen

            # The clean pass adds a zero leaf to the embeddings: its gradient is the gradient w.r.t. the embeddings,
            # even when the embedding matrix is frozen (LoRA, head-only), and the clean loss still reaches that matrix.
            clean, outputs, seen = loss_with(None)
            grad = _grad(clean, seen.delta, retain_graph=True)
            mask = _token_mask(mask, seen.output)
            if spec.method == "fgm":
                delta = perturbation(grad, mask, spec.epsilon)
            else:
                # PGD: the clean gradient gives the first step for free; each later step costs a forward and backward.
                delta = project(perturbation(grad, mask, spec.alpha), spec.epsilon)
                for _ in range(spec.steps - 1):
                    step = delta.clone().requires_grad_()
                    inner, _, _ = loss_with(step)
                    delta = project(delta + perturbation(_grad(inner, step), mask, spec.alpha), spec.epsilon)
            # delta is a constant here; the adversarial loss trains the weights, embedding matrix included.
            adv, _, _ = loss_with(delta.detach())
            self._adv_parts = (clean.detach().mean(), adv.detach().mean())
            loss = clean + spec.weight * adv
            return (loss, outputs) if return_outputs else loss

        def training_step(self, model, inputs, num_items_in_batch=None):
            if self._adv_logged_step is None:  # the first step of this train() call; a resumed run starts past 0
                self._adv_logged_step = self.state.global_step
            step = super().training_step(model, inputs, num_items_in_batch)
            if not self._adv_parts:  # a base whose training_step skips compute_loss
                return step
            (clean, adv), self._adv_parts = self._adv_parts, ()
            # The Trainer logs the mean over optimizer steps of what this returns, which it may have divided for
            # gradient accumulation; scaling both parts by the same factor keeps them adding up to the logged loss.
            total = clean + spec.weight * adv
            scale = torch.where(total != 0, step / total, torch.zeros_like(total))
            sums = torch.stack([clean, adv]) * scale  # tensors, so logging costs no device sync per micro-batch
            self._adv_sums = sums if self._adv_sums is None else self._adv_sums + sums
            return step

        def log(self, logs, *args, **kwargs):
            if "loss" in logs and self._adv_sums is not None:
                steps = max(self.state.global_step - self._adv_logged_step, 1)
                clean, adv = (self._adv_sums / steps).tolist()  # this process's batches
                logs = {**logs, "clean_loss": clean, "adv_loss": adv}
                self._adv_sums, self._adv_logged_step = None, self.state.global_step
            return super().log(logs, *args, **kwargs)

        def train(self, *args, **kwargs):
            self._adv_sums, self._adv_logged_step = None, None
            return super().train(*args, **kwargs)

    AdversarialTrainer.__name__ = AdversarialTrainer.__qualname__ = f"Adversarial{base.__name__}"
    return AdversarialTrainer


def perturbation(grad: torch.Tensor, mask: torch.Tensor, size: float) -> torch.Tensor:
    """`size` × grad / ‖grad‖ per example, over its non-pad positions; zero where the gradient is zero."""
    # grad: [batch, seq, hidden]; mask: [batch, seq], 1 at real tokens. One norm per example over the whole block, so a
    # long example spreads the same budget over more tokens instead of getting a larger total nudge.
    g = grad.float() * mask.unsqueeze(-1).float()
    norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))
    return (size * g / norm).to(grad.dtype)


def project(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """delta scaled back onto the L2 ball of radius epsilon, per example, where it lies outside."""
    norm = delta.float().flatten(1).norm(dim=1).view(-1, *([1] * (delta.dim() - 1)))
    return delta * (epsilon / norm.clamp_min(1e-12)).clamp(max=1).to(delta.dtype)


_NO_LAYER = (
    "finetune.adversarial perturbs the word embeddings, but {} has no get_input_embeddings(): "
    "use a Hugging Face text model or set finetune.adversarial to empty."
)
_NOT_CALLED = (
    "finetune.adversarial perturbs the word embeddings, but {} did not call its get_input_embeddings() layer on the "
    "batch: use a model that embeds input_ids itself or set finetune.adversarial to empty."
)


class _Seen:
    """What the hook saw on the first call: the embedding output [batch, seq, hidden] and the delta added to it."""

    output: torch.Tensor | None = None
    delta: torch.Tensor | None = None


# Text is discrete, so the nudge goes on the word embeddings, the first continuous point. It is added by a hook on the
# embedding layer's output rather than fed as `inputs_embeds`: the model still sees `input_ids`, which decoder
# classifiers need to find the last non-pad token (with `inputs_embeds` they pool the last position, a pad when
# padding is on the right), and models that take no `inputs_embeds` work too.
@contextmanager
def _added(layer: torch.nn.Module, delta: torch.Tensor | None):
    """Add `delta` (None: a zero leaf that requires grad) to the layer's output on its first call while inside."""
    seen = _Seen()

    def hook(module, args, output):
        # an encoder-decoder embeds its decoder inputs too: only the first call is the input
        if seen.output is not None:
            return output
        seen.output = output
        seen.delta = torch.zeros_like(output, requires_grad=True) if delta is None else delta
        return output + seen.delta

    handle = layer.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _embedding_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The word-embedding layer; a PeftModel forwards get_input_embeddings to the model it wraps."""
    try:
        layer = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        layer = None
    if not isinstance(layer, torch.nn.Module):
        raise UserError(_NO_LAYER.format(type(model).__name__))
    return layer


def _token_mask(mask: torch.Tensor | None, output: torch.Tensor) -> torch.Tensor:
    """The batch's attention mask as [batch, seq] (1 at real tokens); all ones when there is none of that shape."""
    if mask is None or mask.shape != output.shape[:2]:
        return torch.ones(output.shape[:2], device=output.device)
    return mask.to(output.device)


def _grad(loss: torch.Tensor, wrt: torch.Tensor, retain_graph: bool = False) -> torch.Tensor:
    """d loss / d wrt, detached; zeros when the loss does not depend on it."""
    (grad,) = torch.autograd.grad(loss.sum(), wrt, retain_graph=retain_graph, allow_unused=True)
    return torch.zeros_like(wrt) if grad is None else grad.detach()
