"""The fine-tuning loop: LoRA or full fine-tuning, one process or data-parallel under torchrun (gloo).

Data parallelism: every optimizer step takes one global batch of batch_size x grad_accum x world_size
examples from a seeded per-epoch permutation; rank r takes the r-th contiguous share and splits it into
grad_accum micro-batches. Each micro-batch's summed loss is divided by the number of scored positions of the
whole global batch (every rank can count it), and gradients are summed over ranks, so the update equals one
process training on the same global batch, whatever the number of ranks.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import TinyGemmaError
from ..files import FileWriteError, atomic_open, atomic_path, atomic_write_text, check_writable_dir
from ..kernels import native_bf16
from . import data as D
from .checkpoint import load_checkpoint, save_checkpoint
from .classifier import SequenceClassifier
from .lora import ALL_TARGETS, AdapterConfig, add_lora, lora_tensors, merged_state, save_adapter

# language modelling (text, prompt/completion or chat rows); chat rows only; classification head; generative labels
TASKS = ("lm", "chat", "classify-head", "classify-lm")
LM_TASKS = ("lm", "chat")
METHODS = ("lora", "full")
DEFAULT_LR = {"lora": 2e-4, "full": 2e-5}
CHECKPOINT = "checkpoint.pt"
OUTPUT_FILES = (CHECKPOINT, "metrics.jsonl", "summary.json", "loss.png")     # in --out, beside adapter/, model/
OUTPUT_DIRS = ("adapter", "model")


class ConfigError(TinyGemmaError, ValueError):
    """A training setting has the wrong type or is out of range; the message names the field."""


@dataclass
class TrainConfig:
    """Everything a fine-tuning run needs (the YAML keys are these names)."""

    data: str = ""                     # training file (.jsonl / .csv)
    out: str = "finetune_out"          # output directory: adapter/ or model/, checkpoint, metrics, loss.png
    model: str | None = None           # base weights (default: the embedded Gemma 3 270M), loaded in float32
    task: str = "lm"                   # one of TASKS
    method: str = "lora"               # one of METHODS
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05              # LoRA dropout
    targets: tuple[str, ...] = ALL_TARGETS
    lora_layers: int | None = None     # LoRA on the last N blocks only (default all): the backward pass stops there
    text_column: str = "text"          # classification rows
    label_column: str = "label"
    eval_data: str | None = None       # held-out file; default: a random eval_fraction of the training rows
    eval_fraction: float = 0.05
    eval_max: int = 256                # held-out rows at most
    eval_every: int = 50               # steps between evaluations (0: only at the end)
    max_length: int = 512              # tokens per example at most
    group_by_length: bool = False      # batch examples of similar length (less padding; same data per epoch)
    batch_size: int = 8                # examples per micro-batch, per process
    grad_accum: int = 1                # micro-batches per optimizer step
    steps: int | None = None           # optimizer steps (default: `epochs` passes over the data)
    epochs: float = 1.0
    lr: float | None = None            # default DEFAULT_LR[method]
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0         # 0: no clipping
    bf16: bool | None = None           # bfloat16 autocast for the matmuls (float32 master weights); None: where
                                       # the CPU has native bfloat16 (AVX512_BF16, AMX, ARM BF16), else float32
    gradient_checkpointing: bool = False
    save_every: int = 100              # steps between checkpoints (0: only at the end or on Ctrl-C)
    seed: int = 0
    resume: bool = False
    progress: bool = True

    def validate(self) -> None:
        """Checks every field's type (normalizing: ints to floats, numeric strings such as YAML's 2e-4 to
        floats, "a,b" to a tuple) and range; ConfigError naming the field."""
        for f in fields(self):
            setattr(self, f.name, _typed(f.name, getattr(self, f.name), f.type))
        if not self.data:
            raise ConfigError("no training data: give a .jsonl or .csv file (--data or 'data:' in the YAML)")
        if not self.out:
            raise ConfigError("out must name an output directory")
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("rank", "batch_size", "grad_accum", "max_length", "lora_layers", "steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("eval_max", "eval_every", "save_every", "warmup_steps", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be at least 0, got {getattr(self, name)}")
        for name in ("alpha", "epochs", "lr"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if not 0 <= self.seed < 2 ** 63:
            raise ConfigError(f"seed must be in [0, 2**63), got {self.seed}")
        bad = [t for t in self.targets if t not in ALL_TARGETS]
        if not self.targets or bad:
            raise ConfigError(f"targets must be some of {', '.join(ALL_TARGETS)}, got {','.join(self.targets)!r}")
        for name in ("text_column", "label_column"):
            if not getattr(self, name):
                raise ConfigError(f"{name} must not be empty")

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "TrainConfig":
        """A checked TrainConfig from YAML/flag values; ConfigError '<source>: <field> ...' when one is wrong."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key {unknown[0]!r}")
        cfg = cls(**values)
        try:
            cfg.validate()
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        return cfg


def _typed(name: str, value, annotation: str):
    """`value` checked against a field's annotation ("int | None", "float", "tuple[str, ...]", ...)."""
    kinds = [k.strip() for k in annotation.split("|")]
    if value is None and "None" in kinds:
        return None
    is_int = isinstance(value, int) and not isinstance(value, bool)
    for kind in kinds:
        if kind == "bool" and isinstance(value, bool):
            return value
        if kind == "int" and is_int:
            return value
        if kind == "str" and isinstance(value, str):
            return value
        if kind == "float" and (is_int or isinstance(value, (float, str))):
            try:
                number = float(value)       # YAML reads 2e-4 (no dot) as a string
            except (ValueError, OverflowError):
                continue
            if math.isfinite(number):
                return number
        if kind.startswith("tuple[str"):
            if isinstance(value, str):
                value = value.split(",")
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return tuple(v.strip() for v in value)
    want = {"bool": "true or false", "int": "an integer", "float": "a finite number", "str": "a string",
            "None": "null"}
    wanted = " or ".join(want.get(k, "a list of strings") for k in kinds)
    raise ConfigError(f"{name} must be {wanted}, got {value!r}")


@dataclass
class RunState:
    """What a checkpoint restores besides weights and optimizer: the step and the history."""

    step: int = 0
    history: list[dict] = field(default_factory=list)      # {"step", "loss", "lr", ...} and eval rows
    train_seconds: float = 0.0
    cpu_seconds: float = 0.0           # CPU time of this process (all threads): comparable on a shared machine
    tokens: int = 0


class Distributed:
    """Rank and world size from torchrun's environment; gloo on CPU. One process: rank 0 of 1."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(t)
        return t.tolist()

    def sum_grads(self, params: list[nn.Parameter]) -> None:
        """Sum gradients over ranks, in one flat buffer."""
        if self.world == 1:
            return
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def deferred_interrupt():
    """Hold Ctrl-C until the block ends, so an optimizer update is never left half done."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield         # Ctrl-C is ignored (a background job) or handled by someone else: leave it so
        return
    pending = []
    previous = signal.signal(signal.SIGINT, lambda *a: pending.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            raise KeyboardInterrupt


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # Linux reports KiB


class Trainer:
    """Builds the model, data, optimizer and schedule from a TrainConfig; `run()` trains and writes outputs."""

    def __init__(self, cfg: TrainConfig, lm=None):
        """lm: an already loaded float32 LM to train (default: load cfg.model in float32)."""
        cfg.validate()
        self.cfg = cfg
        self.dist = Distributed()
        self.out = Path(cfg.out)
        if self.dist.main:
            self.check_outputs()                # before data and model load: a bad --out fails at once
        # Emulated bfloat16 costs ~30x float32 (measured on AVX2): autocast only where the CPU has it.
        self.bf16 = native_bf16() if cfg.bf16 is None else bool(cfg.bf16)
        torch.manual_seed(cfg.seed)
        rows = D.read_rows(cfg.data)            # before the model loads: a bad file fails at once
        eval_rows = D.read_rows(cfg.eval_data) if cfg.eval_data else None
        if lm is None:
            from ..lm import load
            lm = load(cfg.model, dtype="float32")
        self.lm = lm
        self.tokenizer = lm.tokenizer
        self._build_data(rows, eval_rows)
        self._build_model()
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        self.lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.method]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.lr, weight_decay=cfg.weight_decay, fused=True)
        self.global_batch = cfg.batch_size * cfg.grad_accum * self.dist.world
        self.steps_per_epoch = len(self.train) // self.global_batch
        if self.steps_per_epoch == 0:
            raise D.DataError(f"{cfg.data}: {len(self.train)} training examples are fewer than one global batch "
                              f"({self.global_batch}); lower batch_size or grad_accum")
        self.total_steps = cfg.steps or max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        self.state = RunState()
        self._epoch_order: tuple[int, list[int]] | None = None

    # ------------------------------------------------------------------------------------------ setup

    def check_outputs(self) -> None:
        """--out must be (or become) a writable directory, with nothing in the way of the files written into
        it; --resume needs the checkpoint."""
        check_writable_dir(self.out, "output directory (out)")
        for name in OUTPUT_FILES:
            if (self.out / name).is_dir():
                raise FileWriteError(f"{self.out / name}: is a directory, in the way of an output file")
        for name in OUTPUT_DIRS:
            if (self.out / name).exists() and not (self.out / name).is_dir():
                raise FileWriteError(f"{self.out / name}: is a file, in the way of an output directory")
        if self.cfg.resume and not (self.out / CHECKPOINT).is_file():
            raise FileNotFoundError(f"{self.out / CHECKPOINT}: no checkpoint to resume from")

    def _build_data(self, rows: list[dict], eval_rows: list[dict] | None) -> None:
        cfg, tok = self.cfg, self.tokenizer
        if eval_rows is not None:
            train_rows, eval_rows = rows, eval_rows[:cfg.eval_max]
        else:
            train_rows, eval_rows = D.split_rows(cfg.data, rows, cfg.eval_fraction, cfg.eval_max, cfg.seed)
        eval_source = cfg.eval_data or cfg.data
        # Labels from every row of the training file, so a rare label that lands in the held-out split counts.
        if cfg.task == "chat":
            for path, some in ((cfg.data, rows), (eval_source, eval_rows or [])):
                bad = next((r for r in some if "messages" not in r), None)
                if bad is not None:
                    raise D.DataError(f"{path}:{bad['_line']}: --task chat needs a 'messages' field in every row")
        self.labels: list[str] = [] if cfg.task in LM_TASKS else D.label_set(cfg.data, rows, cfg.label_column)
        if cfg.task not in LM_TASKS and len(self.labels) < 2:
            raise D.DataError(f"{cfg.data}: column {cfg.label_column!r} has only the label {self.labels[0]!r}; "
                              f"classification needs at least 2 classes")

        def make(path, some_rows: list[dict]) -> list[D.Example]:
            if cfg.task in LM_TASKS:
                return D.lm_examples(path, some_rows, tok, cfg.max_length)
            columns = (cfg.text_column, cfg.label_column, cfg.max_length)
            if cfg.task == "classify-head":
                return D.head_examples(path, some_rows, tok, self.labels, *columns)
            return D.generative_examples(path, some_rows, tok, *columns)

        self.train = make(cfg.data, train_rows)
        self.held_out = make(eval_source, eval_rows) if eval_rows else []

    def _build_model(self) -> None:
        cfg = self.cfg
        model = self.lm.model
        if cfg.method == "lora":
            model.requires_grad_(False)
            n = len(model.layers)
            layers = range(n - min(cfg.lora_layers or n, n), n)
            add_lora(model, AdapterConfig(cfg.rank, cfg.alpha, cfg.targets), cfg.dropout, layers,
                     torch.bfloat16 if self.bf16 else None)
        else:
            model.requires_grad_(True)
        model.gradient_checkpointing = cfg.gradient_checkpointing
        self.model = model
        self.net = SequenceClassifier(model, len(self.labels)) if cfg.task == "classify-head" else model

    def adapter_config(self) -> AdapterConfig:
        cfg = self.cfg
        base = str(self.lm.weights.source) if self.lm.weights is not None else ""
        task = "classification" if cfg.task == "classify-head" else "causal_lm"
        return AdapterConfig(cfg.rank, cfg.alpha, tuple(cfg.targets), task, list(self.labels), base)

    # ------------------------------------------------------------------------------------------ maths

    def loss_sum(self, batch: D.Batch) -> torch.Tensor:
        """Summed loss of a micro-batch (float32): cross-entropy over scored positions or over rows."""
        if batch.labels is not None:
            return F.cross_entropy(self.net(batch.ids, batch.lengths), batch.labels, reduction="sum")
        scored = batch.targets != D.IGNORE
        # Only scored positions go through the 262k-row vocabulary projection.
        h = self.model.norm(self.model.body(batch.ids)[scored])
        return F.cross_entropy(self.model.project(h), batch.targets[scored], reduction="sum")

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16)

    def lr_at(self, step: int) -> float:
        """Linear warmup, then cosine decay to zero at total_steps."""
        warm = self.cfg.warmup_steps
        if step < warm:
            return self.lr * (step + 1) / warm
        progress = (step - warm) / max(1, self.total_steps - warm)
        return self.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def global_indices(self, step: int) -> list[int]:
        """Example indices of the global batch of `step`, from the seeded permutation of its epoch."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            self._epoch_order = (epoch, self.epoch_order(epoch))
        return self._epoch_order[1][k * self.global_batch:(k + 1) * self.global_batch]

    def epoch_order(self, epoch: int) -> list[int]:
        """The seeded order of the examples in `epoch`. With group_by_length, each window of 32 global batches
        is sorted by length and cut into batches, whose order is then shuffled: every batch pads little, and
        the epoch still sees every example once in a seeded, resumable order."""
        g = torch.Generator().manual_seed(self.cfg.seed + epoch)
        order = torch.randperm(len(self.train), generator=g).tolist()
        if not self.cfg.group_by_length:
            return order
        size = self.global_batch
        window = size * 32
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start:start + window], key=lambda i: len(self.train[i].ids))
            batches += [chunk[i:i + size] for i in range(0, len(chunk), size)]
        full = [b for b in batches if len(b) == size]
        rest = [i for b in batches if len(b) < size for i in b]
        shuffled = [full[j] for j in torch.randperm(len(full), generator=g).tolist()]
        return [i for b in shuffled for i in b] + rest

    def train_step(self, step: int) -> tuple[float, int]:
        """One optimizer step; returns (mean loss over the global batch, tokens this rank processed)."""
        cfg = self.cfg
        indices = self.global_indices(step)
        scored_total = sum(self.train[i].scored for i in indices)
        share = cfg.batch_size * cfg.grad_accum
        mine = indices[self.dist.rank * share:(self.dist.rank + 1) * share]
        self.net.train()
        loss_total, tokens = 0.0, 0
        for start in range(0, share, cfg.batch_size):
            batch = D.collate([self.train[i] for i in mine[start:start + cfg.batch_size]], self.tokenizer.pad_id)
            with self.autocast():
                loss = self.loss_sum(batch)
            (loss / scored_total).backward()
            loss_total += loss.item()
            tokens += batch.tokens
        self.dist.sum_grads(self.params)
        with deferred_interrupt():
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(step)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.state.step = step + 1
        return self.dist.sum([loss_total])[0] / scored_total, tokens

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean loss (and accuracy for the classification head) on the held-out split, shared over ranks."""
        self.net.eval()
        mine = self.held_out[self.dist.rank::self.dist.world]
        loss, scored, correct = 0.0, 0, 0
        for start in range(0, len(mine), self.cfg.batch_size):
            examples = mine[start:start + self.cfg.batch_size]
            batch = D.collate(examples, self.tokenizer.pad_id)
            with self.autocast():
                if batch.labels is not None:
                    logits = self.net(batch.ids, batch.lengths)
                    correct += int((logits.argmax(-1) == batch.labels).sum())
                    loss += float(F.cross_entropy(logits, batch.labels, reduction="sum"))
                else:
                    loss += float(self.loss_sum(batch))
            scored += sum(e.scored for e in examples)
        loss, scored, correct = self.dist.sum([loss, scored, correct])
        row = {"step": self.state.step, "eval_loss": loss / max(scored, 1)}
        if self.cfg.task == "classify-head":
            row["eval_accuracy"] = correct / len(self.held_out)
        return row

    # ------------------------------------------------------------------------------------------ state

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.net.named_parameters() if p.requires_grad}

    def save_checkpoint(self) -> None:
        """Weights being trained, optimizer, RNG and history in one file (atomic), then the usable outputs."""
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            # Tensors and plain containers only, so that it loads with weights_only=True (see checkpoint.py).
            payload = {"trainable": self.trainable_state(), "optimizer": self.optimizer.state_dict(),
                       "rng": torch.get_rng_state(), "state": asdict(self.state), "config": asdict(self.cfg)}
            save_checkpoint(self.out / CHECKPOINT, payload)
            self.write_outputs()
        self.dist.barrier()

    def load_checkpoint(self) -> None:
        path = self.out / CHECKPOINT
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from")
        payload = load_checkpoint(path)
        params = {n: p for n, p in self.net.named_parameters() if p.requires_grad}
        if set(payload["trainable"]) != set(params):
            raise ValueError(f"{path}: the checkpoint's tensors do not fit this run's model "
                             f"(different task, method or rank?)")
        for name, value in payload["trainable"].items():
            if params[name].shape != value.shape:
                raise ValueError(f"{path}: checkpoint tensor {name} does not fit this run's model "
                                 f"(different task, method or rank?)")
            params[name].data.copy_(value)
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
            torch.set_rng_state(payload["rng"])
            self.state = RunState(**payload["state"])
        except (TypeError, ValueError, KeyError, RuntimeError) as e:
            raise ValueError(f"{path}: the checkpoint's optimizer or run state does not fit this run "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None

    def write_outputs(self) -> dict[str, Path]:
        """adapter/ (LoRA factors, head, config) and, for full fine-tuning, model/ (a Hugging Face directory);
        metrics.jsonl and loss.png. Rank 0 only."""
        from ..export.safetensors import save_hf_dir

        paths = {}
        head = self.net.score.weight if isinstance(self.net, SequenceClassifier) else None
        if self.cfg.method == "lora" or head is not None:
            paths["adapter"] = save_adapter(self.out / "adapter", self.adapter_config(), lora_tensors(self.model), head)
        if self.cfg.method == "full":
            paths["model"] = save_hf_dir(self.out / "model", self.model.config, merged_state(self.model), self.tokenizer)
        with atomic_open(self.out / "metrics.jsonl", "w", encoding="utf-8") as f:
            for row in self.state.history:
                f.write(json.dumps(row) + "\n")
        paths["metrics"] = self.out / "metrics.jsonl"
        png = plot_losses(self.state.history, self.out / "loss.png")
        if png:
            paths["loss_curve"] = png
        return paths

    # ------------------------------------------------------------------------------------------ loop

    def run(self, on_step: Callable[[int, float], None] | None = None) -> dict:
        """Train to total_steps (continuing a checkpoint with cfg.resume); returns the summary.

        on_step(step, loss) is called after every optimizer step. Ctrl-C (KeyboardInterrupt) saves a
        checkpoint at the last finished step, then propagates.
        """
        from tqdm import tqdm

        cfg = self.cfg
        if cfg.resume:
            self.load_checkpoint()
        bar = tqdm(total=self.total_steps, initial=self.state.step, desc="finetune", unit="step", file=sys.stderr,
                   disable=not (cfg.progress and self.dist.main), dynamic_ncols=True)
        started = time.perf_counter() - self.state.train_seconds
        cpu_started = time.process_time() - self.state.cpu_seconds
        try:
            while self.state.step < self.total_steps:
                step = self.state.step
                loss, tokens = self.train_step(step)
                tokens = int(self.dist.sum([tokens])[0])
                self.state.tokens += tokens
                self.state.train_seconds = time.perf_counter() - started
                self.state.cpu_seconds = time.process_time() - cpu_started
                self.state.history.append({"step": step + 1, "loss": loss, "lr": self.lr_at(step),
                                           "tokens": self.state.tokens,
                                           "seconds": round(self.state.train_seconds, 3),
                                           "cpu_seconds": round(self.state.cpu_seconds, 3)})
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{self.state.tokens / self.state.train_seconds:.0f}")
                done = self.state.step == self.total_steps
                if self.held_out and ((cfg.eval_every and self.state.step % cfg.eval_every == 0) or done):
                    row = self.evaluate()
                    row["seconds"] = round(time.perf_counter() - started, 3)
                    row["cpu_seconds"] = round(time.process_time() - cpu_started, 3)
                    self.state.history.append(row)
                    if cfg.progress and self.dist.main:
                        bar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                                  file=sys.stderr)
                if cfg.save_every and self.state.step % cfg.save_every == 0 and not done:
                    self.save_checkpoint()
                if on_step:
                    on_step(self.state.step, loss)
        except KeyboardInterrupt:
            bar.close()
            self.save_checkpoint()
            if self.dist.main:
                print(f"tinygemma: interrupted; checkpoint at step {self.state.step} in {self.out} "
                      f"(continue with --resume)", file=sys.stderr)
            raise
        bar.close()
        self.save_checkpoint()
        return self.summary()

    def summary(self) -> dict:
        seconds = self.state.train_seconds
        evals = [r for r in self.state.history if "eval_loss" in r]
        out = {"steps": self.state.step, "train_seconds": round(seconds, 1),
               "cpu_seconds": round(self.state.cpu_seconds, 1), "tokens": self.state.tokens,
               "tokens_per_second": round(self.state.tokens / seconds, 1) if seconds else 0.0,
               "peak_rss_mb": round(peak_rss_mb(), 1), "world_size": self.dist.world,
               "trainable_parameters": sum(p.numel() for p in self.params),
               "precision": "bfloat16 autocast" if self.bf16 else "float32",
               "final_loss": next((r["loss"] for r in reversed(self.state.history) if "loss" in r), None)}
        if evals:
            out.update({k: v for k, v in evals[-1].items() if k.startswith("eval_")})
        if self.dist.main:
            atomic_write_text(self.out / "summary.json", json.dumps(out, indent=2) + "\n")
        return out


def plot_losses(history: list[dict], path: Path) -> Path | None:
    """Training loss per step (and held-out loss) as a PNG (written atomically); None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    train = [(r["step"], r["loss"]) for r in history if "loss" in r]
    held = [(r["step"], r["eval_loss"]) for r in history if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if held:
        ax.plot(*zip(*held), "o-", label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path
