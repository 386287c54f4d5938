"""sln-jax's model against torchvision's Mask R-CNN on the same CPU, alternating, as ratios.

The model a user would pick instead of SLN is torchvision's ``maskrcnn_resnet50_fpn``. Both
sides run ResNet-50-FPN with random weights on the same random scenes (batch ``--batch``,
``--instances`` boxes per image), in two long-lived worker processes that this script drives
one measurement at a time: while one side is timed the other waits on its pipe, so the two
never compete for the cores, and the alternation (jax, torch, torch, jax, ...) spreads this
VM's minute-to-minute speed changes over both sides. Printed, per image size:

* train step (forward + backward + optimizer update), inference (forward + masks pasted at
  image resolution) and backbone + FPN forward + backward alone, milliseconds per image:
  the median of ``--steps`` timed calls after warm-up, for every round, and the ratio
  sln-jax / torchvision of each round (so the spread of the ratio is visible);
* compile time of sln-jax's train step (trace + XLA compile + first run);
* memory: the step's XLA memory analysis (arguments, outputs, temporaries) and each worker
  process's peak RSS;
* sln-jax's step broken into parts (backbone, FPN, RPN + proposals, ROI sampling and targets,
  ROIAlign, box head, GLM, layering head, losses), each jitted alone as a forward + backward
  where it has parameters: its FLOPs and bytes accessed from XLA's cost analysis and its
  time. Parts do not add up exactly to the step (XLA fuses across part boundaries).

Matched settings: torchvision with FrozenBatchNorm2d and every ResNet stage trainable (as
SLN's configs: ``norm = 'frozen_bn'``, nothing frozen), ``min_size = max_size = S`` so images
are not resized, SGD with momentum on both sides, ``torch.set_num_threads(2)``. Everything
else stays torchvision's default (512 ROIs per image for the box head, mask head on the
positives) and sln-jax's paper config (``configs/cocoa.py``: 100 ROIs per image, 32
layering-head slots per image, 16 x 16 pool, GLM at stride 4, width 128). Scores are thresholded
at 0.05 on both sides for inference.

The torch side needs its own environment (torch is no dependency of sln-jax):

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy
    python benchmarks/bench_vs_torchvision.py --torch_python /tmp/torchvenv/bin/python \\
        [--sizes 256 512] [--batch 2] [--instances 10] [--steps 5] [--rounds 2]

``--torch_python ''`` measures sln-jax alone (no ratios). The sln-jax worker sets the CPU XLA
flags of ``sln_jax.runtime`` exactly as the command-line tools do.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_LAYERS = 4


# ----------------------------------------------------------------------------- shared data


def scene_boxes(batch: int, size: int, instances: int, seed: int = 0) -> np.ndarray:
    """float32 [B, N, 4] (y1, x1, y2, x2) boxes of 10 % to 45 % of the side, inside the image."""
    rng = np.random.default_rng(seed)
    hw = rng.uniform(0.10 * size, 0.45 * size, (batch, instances, 2))
    yx = rng.uniform(0, 1, (batch, instances, 2)) * (size - hw)
    return np.concatenate([yx, yx + hw], -1).astype(np.float32)


def scene_images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """float32 [B, S, S, 3] images in [0, 1]."""
    return np.random.default_rng(seed + 1).uniform(0, 1, (batch, size, size, 3)).astype(
        np.float32)


def median_ms(fn, steps: int, per: int) -> float:
    """Median wall milliseconds of ``fn()`` over ``steps`` calls, divided by ``per``."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times) / per


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- torch worker


class TorchSide:
    """torchvision's Mask R-CNN R50-FPN, frozen BN, all stages trainable."""

    def __init__(self, size: int, batch: int, instances: int):
        import torch
        from torchvision.models import resnet50
        from torchvision.models.detection import MaskRCNN
        from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
        from torchvision.ops.misc import FrozenBatchNorm2d

        torch.set_num_threads(2)
        torch.manual_seed(0)
        self.torch = torch
        backbone = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 5)
        self.model = MaskRCNN(backbone, num_classes=2, min_size=size, max_size=size,
                              box_score_thresh=0.05)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9)
        self.batch = batch
        images = scene_images(batch, size)
        boxes = scene_boxes(batch, size, instances)
        self.images = [torch.from_numpy(im.transpose(2, 0, 1).copy()) for im in images]
        self.targets = []
        for b in range(batch):
            xyxy = boxes[b][:, [1, 0, 3, 2]]
            masks = np.zeros((instances, size, size), np.uint8)
            for i, (x1, y1, x2, y2) in enumerate(xyxy.astype(int)):
                masks[i, y1:y2, x1:x2] = 1
            self.targets.append({"boxes": torch.from_numpy(xyxy),
                                 "labels": torch.ones(instances, dtype=torch.int64),
                                 "masks": torch.from_numpy(masks)})
        self.stacked = torch.stack(self.images)

    def train(self):
        self.model.train()
        losses = self.model(self.images, self.targets)
        loss = sum(losses.values())
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def infer(self):
        self.model.eval()
        with self.torch.no_grad():
            self.model(self.images)

    def backbone(self):
        self.model.train()
        features = self.model.backbone(self.stacked)
        loss = sum(f.mean() for f in features.values())
        self.model.zero_grad()
        loss.backward()

    def info(self) -> dict:
        return {"peak_rss_mb": peak_rss_mb(), "version": self.torch.__version__}


# ----------------------------------------------------------------------------- jax worker


def paper_config(size: int, instances: int):
    """configs/cocoa.py (the paper's model settings, K = 4, one class) at image size S, with
    torchvision's backbone, ResNet-50 (the paper's base config has ResNet-101)."""
    sys.path.insert(0, ROOT)
    import importlib.util
    spec = importlib.util.spec_from_file_location("paper_config",
                                                  os.path.join(ROOT, "configs", "cocoa.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    # The peer is maskrcnn_resnet50_fpn: the same depth on both sides (until commit 62380ea
    # this side ran the base config's ResNet-101, twice ResNet-50's FLOPs).
    config.model.backbone = "resnet50"
    config.data.image_size = size
    config.data.num_classes = 1
    config.data.num_layers = NUM_LAYERS
    config.data.max_instances = instances
    config.model.score_threshold = 0.05
    config.optim.name = "sgd"
    config.optim.warmup_steps = 0
    return config


def random_batch(batch: int, size: int, instances: int, crop: int) -> dict:
    """A training batch in the layout of docs/interfaces.md (random targets, shared boxes)."""
    rng = np.random.default_rng(2)
    images = scene_images(batch, size)
    return {
        "image": (images - 0.45) / 0.225,
        "image_size": np.full((batch, 2), size, np.int32),
        "boxes": scene_boxes(batch, size, instances),
        "classes": np.ones((batch, instances), np.int32),
        "valid": np.ones((batch, instances), bool),
        "order": np.tile(np.arange(instances, dtype=np.int32), (batch, 1)),
        "layers": rng.integers(-1, NUM_LAYERS, (batch, instances, crop, crop)).astype(np.int8),
        "semdist": rng.uniform(0, NUM_LAYERS + 1, (batch, instances, crop, crop)).astype(
            np.float32),
        "global_layers": rng.integers(0, NUM_LAYERS, (batch, size, size)).astype(np.int8),
    }


class JaxSide:
    """sln-jax's jitted train step (``sln_jax.train``) and inference, paper config."""

    def __init__(self, size: int, batch: int, instances: int):
        from sln_jax import runtime
        runtime.configure_cpu()
        import jax
        import jax.numpy as jnp

        from sln_jax import losses, postprocess, train, train_state
        from sln_jax.models.sln import SLN

        self.jax, self.jnp = jax, jnp
        config = paper_config(size, instances)
        self.config = config
        self.batch_np = random_batch(batch, size, instances, config.data.mask_target_size)
        self.batch_size = batch
        mesh = train_state.create_mesh(jax.devices()[:1])
        model = SLN(config.model)
        tx, _ = train_state.create_optimizer(config.optim, 1000)
        start = time.perf_counter()
        self.state = train_state.create_train_state(model, tx, 0, (batch, size, size, 3), mesh)
        jax.block_until_ready(self.state)
        self.init_s = time.perf_counter() - start
        runtime.release_host_memory()  # as sln_jax.train does after compiling
        self.batch = train.shard_batch({k: v[None] for k, v in self.batch_np.items()}, mesh)
        loss_fn = lambda outputs: losses.compute(outputs, config.loss)  # noqa: E731
        self.step_fn = train.jit_train_step(loss_fn, mesh)
        self.eval_fn = train.jit_eval_step(mesh)
        self.postprocess = postprocess
        start = time.perf_counter()
        self.compiled_step = self.step_fn.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - start
        runtime.release_host_memory()

        images = self.batch["image"]

        def backbone_loss(params, batch_stats):
            # The state is donated by every train step: take its arrays as arguments.
            v = {"params": params, "batch_stats": batch_stats}
            pyramid = model.apply(v, images, method=_pyramid)
            return sum(jnp.mean(level) for level in pyramid)

        self.backbone_fn = jax.jit(jax.value_and_grad(backbone_loss))

    def train(self):
        self.state, metrics = self.compiled_step(self.state, self.batch)
        self.jax.block_until_ready(metrics)

    def infer(self):
        outputs = self.jax.device_get(self.eval_fn(self.state, self.batch["image"]))
        size = self.config.data.image_size
        for b in range(self.batch_size):
            one = {k: v[b] for k, v in outputs.items() if k != "global_logits"}
            self.postprocess.to_instances(one, (size, size), (size, size), self.config.model)

    def backbone(self):
        self.jax.block_until_ready(self.backbone_fn(self.state.params,
                                                    self.state.batch_stats))

    def info(self) -> dict:
        memory = self.compiled_step.memory_analysis()
        from benchmarks import sln_parts
        cost = sln_parts.cost(self.compiled_step)
        return {"peak_rss_mb": peak_rss_mb(), "version": self.jax.__version__,
                "compile_s": self.compile_s, "init_s": self.init_s,
                "xla_argument_mb": memory.argument_size_in_bytes / 2**20,
                "xla_output_mb": memory.output_size_in_bytes / 2**20,
                "xla_temp_mb": memory.temp_size_in_bytes / 2**20,
                "step_gflops": cost["flops"] / 1e9, "step_gb": cost["bytes"] / 1e9}

    def parts(self, steps: int) -> list[dict]:
        from benchmarks import sln_parts
        return sln_parts.measure(self.config, self.state, self.batch, steps)


def _pyramid(module, images):
    """SLN method: the FPN pyramid of ``images`` (backbone + FPN as inside the model)."""
    return module.pyramid(images)


def worker(side: str, size: int, batch: int, instances: int) -> None:
    """Answers JSON commands on stdin ({"op": ..., "steps": n}) with JSON lines on stdout."""
    out = sys.stdout
    sys.stdout = sys.stderr  # libraries' prints must not corrupt the protocol
    impl = (TorchSide if side == "torch" else JaxSide)(size, batch, instances)
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        command = json.loads(line)
        op, steps = command["op"], command.get("steps", 5)
        if op == "info":
            reply = impl.info()
        elif op == "parts":
            reply = {"parts": impl.parts(steps)}
        else:
            fn = getattr(impl, op)
            fn()  # warm-up (and the first call's compile on the JAX side)
            reply = {"ms": median_ms(fn, steps, batch)}
        out.write(json.dumps(reply) + "\n")
        out.flush()


# ----------------------------------------------------------------------------- driver


class Worker:
    """One worker subprocess; ``ask`` sends a command and waits for its answer."""

    def __init__(self, python: str, side: str, size: int, args):
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.proc = subprocess.Popen(
            [python, os.path.abspath(__file__), "--worker", side, "--size", str(size),
             "--batch", str(args.batch), "--instances", str(args.instances)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            if not args.verbose else None, text=True, cwd=ROOT, env=env)
        self.side = side
        self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"bench_vs_torchvision: the {self.side} worker died (rerun with "
                             f"--verbose to see its error)")
        return json.loads(line)

    def ask(self, op: str, steps: int = 5) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, "steps": steps}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def spread(values: list[float]) -> str:
    return " / ".join(f"{v:.0f}" for v in values)


def timing_table(results: dict) -> list[str]:
    """Lines of the timing table: per op ('train', 'infer', 'backbone') the per-round ms of
    each side ({'jax': [...], 'torch': [...]}, torch empty when not run) and their ratios,
    then the heads (step - backbone)."""
    label = {"train": "train step", "infer": "inference", "backbone": "backbone+FPN fwd+bwd"}
    rows = [(label[op], sides["jax"], sides["torch"]) for op, sides in results.items()]
    train, backbone = results["train"], results["backbone"]
    rows.append(("heads (step - backbone)",
                 [t - b for t, b in zip(train["jax"], backbone["jax"])],
                 [t - b for t, b in zip(train["torch"], backbone["torch"])]))
    table = [("ms per image, rounds", "sln-jax", "torchvision", "ratio")]
    for name, jax_ms, torch_ms in rows:
        table.append((name, spread(jax_ms), spread(torch_ms) or "-",
                      " / ".join(f"{j / t:.2f}x" for j, t in zip(jax_ms, torch_ms)) or "-"))
    # Columns as wide as their longest cell: with more rounds the spreads grow.
    widths = [max(28, max(len(row[0]) for row in table))]
    widths += [max(len(row[c]) for row in table) + 3 for c in range(1, 4)]
    return [f"{row[0]:<{widths[0]}}" + "".join(f"{cell:>{w}}" for cell, w in
                                               zip(row[1:], widths[1:])) for row in table]


def run_size(size: int, args) -> None:
    print(f"\n=== {size} px, batch {args.batch}, {args.instances} instances per image ===",
          flush=True)
    jax_worker = Worker(sys.executable, "jax", size, args)
    torch_worker = Worker(args.torch_python, "torch", size, args) if args.torch_python else None
    results = {op: {"jax": [], "torch": []} for op in ("train", "infer", "backbone")}
    for round_index in range(args.rounds):
        for op in results:
            order = [("jax", jax_worker), ("torch", torch_worker)]
            if round_index % 2:
                order.reverse()
            for name, w in order:
                if w is not None:
                    results[op][name].append(w.ask(op, args.steps)["ms"])
    jinfo = jax_worker.ask("info")
    tinfo = torch_worker.ask("info") if torch_worker else None
    print("\n".join(timing_table(results)))
    print(f"sln-jax compile of the train step: {jinfo['compile_s']:.1f} s; step "
          f"{jinfo['step_gflops']:.1f} GFLOP, {jinfo['step_gb']:.1f} GB accessed (XLA cost "
          f"analysis, whole batch)")
    print(f"memory: sln-jax XLA step arguments {jinfo['xla_argument_mb']:.0f} MB + temporaries "
          f"{jinfo['xla_temp_mb']:.0f} MB, peak RSS {jinfo['peak_rss_mb']:.0f} MB"
          + (f"; torchvision peak RSS {tinfo['peak_rss_mb']:.0f} MB" if tinfo else ""))
    if args.parts:
        parts = jax_worker.ask("parts", args.steps)["parts"]
        total = sum(p["ms"] for p in parts)
        print(f"\nsln-jax step by part (each jitted alone; fwd+bwd where it has parameters):")
        print(f"{'part':<30}{'GFLOP':>9}{'GB':>8}{'ms/image':>10}{'share':>8}")
        for p in parts:
            print(f"{p['name']:<30}{p['gflops']:>9.2f}{p['gb']:>8.2f}{p['ms']:>10.0f}"
                  f"{100 * p['ms'] / total:>7.1f}%")
    jax_worker.close()
    if torch_worker:
        torch_worker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch_python", default="",
                        help="python of a venv with torch + torchvision ('' = sln-jax only)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no_parts", dest="parts", action="store_false",
                        help="skip the per-part breakdown of sln-jax's step")
    parser.add_argument("--verbose", action="store_true", help="show the workers' stderr")
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.size, args.batch, args.instances)
        return
    if args.torch_python and not os.path.exists(args.torch_python):
        raise SystemExit(f"bench_vs_torchvision: --torch_python {args.torch_python} does not "
                         f"exist; see this script's docstring to make the venv")
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; medians of "
          f"{args.steps} calls after warm-up, {args.rounds} alternating rounds")
    for size in args.sizes:
        run_size(size, args)


if __name__ == "__main__":
    main()
