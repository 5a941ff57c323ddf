"""rankbench.bench.measure.metrics: MACs (fvcore, cross-checked with torch's own counter), params, latency, metrics."""
from __future__ import annotations

import pytest
import torch
import torchvision
from sklearn.metrics import f1_score
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rankbench.bench.measure.metrics import count_macs, count_params, evaluate, measure_latency


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)   # grouped conv counts 1/groups
        self.fc = nn.Linear(16 * 4 * 4, 10)
        self.proj = nn.Parameter(torch.randn(10, 10))

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.dw(torch.relu(self.conv2(x)))
        return self.fc(x.flatten(1)) @ self.proj                # matmul is counted too


def _torch_macs(model: nn.Module, shape) -> int:
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2                        # torch counts 2 flops per MAC


def test_count_macs_small_cnn_by_hand_and_against_torch_counter():
    m = SmallCNN()
    by_hand = (8 * 8 * 8 * 3 * 9          # conv1 on 8x8
               + 4 * 4 * 16 * 8 * 9       # conv2, stride 2 -> 4x4
               + 4 * 4 * 16 * 1 * 9       # depthwise
               + 256 * 10                 # fc
               + 10 * 10)                 # matmul
    assert count_macs(m, (3, 8, 8)) == by_hand
    assert count_macs(m, (3, 8, 8)) == _torch_macs(SmallCNN(), (3, 8, 8))


class TinyAttention(nn.Module):
    """One head-split attention: qkv and output projections around scaled_dot_product_attention."""

    def __init__(self, dim: int = 8, heads: int = 2):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):                                        # x (B, L, dim)
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)   # (B, H, L, d / H)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


def test_count_macs_counts_attention_as_its_two_matrix_products():
    m = TinyAttention()
    tokens, dim, heads = 5, 8, 2
    by_hand = (tokens * dim * 3 * dim                            # qkv
               + heads * tokens * tokens * (dim // heads) * 2    # Q K^T, then weights @ V
               + tokens * dim * dim)                             # proj
    assert count_macs(m, (tokens, dim)) == by_hand
    # torch's counter has no formula for the CPU attention kernel: it sees the linears only
    assert _torch_macs(TinyAttention(), (tokens, dim)) == by_hand - heads * tokens * tokens * (dim // heads) * 2


def test_count_macs_resnet18_matches_torch_counter_and_scales_with_input():
    m = torchvision.models.resnet18(num_classes=10)
    macs32 = count_macs(m, (3, 32, 32))
    assert macs32 == _torch_macs(m, (3, 32, 32))
    # conv MACs grow with the pixel count, the fc does not: 4x pixels, a bit under 4x MACs
    macs64 = count_macs(m, (3, 64, 64))
    fc = 512 * 10
    assert macs64 - fc == 4 * (macs32 - fc)


def test_count_macs_is_per_image_and_keeps_the_model_mode():
    m = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.Dropout(0.5))
    m.train()
    assert count_macs(m, (3, 4)) == 60
    assert m.training


def test_count_params_counts_shared_parameters_once():
    lin = nn.Linear(4, 3)
    m = nn.Sequential(lin, nn.ReLU(), nn.BatchNorm1d(3))
    m.add_module("again", lin)
    assert count_params(m) == 4 * 3 + 3 + 3 + 3          # linear + bn weight/bias; buffers excluded


def test_measure_latency_of_real_models_is_positive_and_names_its_settings():
    # wall-clock times are never compared in a test (they depend on the machine and its load):
    # which model measures longer is checked on a fake clock below
    torch.manual_seed(0)
    tiny = nn.Linear(4, 4)
    big = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(4)])
    t_tiny = measure_latency(tiny, (4,), device="cpu", batch=8, repeats=10, warmup=2)
    t_big = measure_latency(big, (1024,), device="cpu", batch=64, repeats=10, warmup=2)
    assert set(t_tiny) >= {"ms", "device", "dtype", "batch"}
    assert t_tiny["ms"] > 0 and t_big["ms"] > 0
    assert t_big["device"].startswith("cpu") and t_big["dtype"] == "float32" and t_big["batch"] == 64


def test_measure_latency_is_the_forward_pass_in_ms_and_orders_big_over_tiny(monkeypatch):
    # a fake clock that only the models' forward passes move, by 1 ms (small) and 5 ms (large):
    # what is timed is the forward pass, reported in ms, exactly, on any machine and load
    import time

    now = [0.0]

    class Costly(nn.Module):
        def __init__(self, ms: float, width: int):
            super().__init__()
            self.ms, self.lin = ms, nn.Linear(width, width)

        def forward(self, x):
            now[0] += self.ms / 1e3
            return self.lin(x)

    with monkeypatch.context() as m:
        m.setattr(time, "perf_counter", lambda: now[0])
        small = measure_latency(Costly(1.0, 4), (4,), batch=8, repeats=5, warmup=2, layout="contiguous")
        large = measure_latency(Costly(5.0, 64), (64,), batch=8, repeats=5, warmup=2, layout="contiguous")
    assert small["ms"] == pytest.approx(1.0) and large["ms"] == pytest.approx(5.0)
    assert small["layout"] == large["layout"] == "contiguous" and small["candidates"] == {"contiguous": small["ms"]}


def test_measure_latency_leaves_the_callers_model_alone_and_rejects_bad_settings():
    m = nn.Linear(8, 8).train()
    r = measure_latency(m, (8,), dtype="bfloat16", repeats=3, warmup=1)
    assert r["dtype"] == "bfloat16" and r["ms"] > 0
    assert m.weight.dtype == torch.float32 and m.training
    with pytest.raises(ValueError, match="latency_dtype: 'float8'.*accepted: float32"):
        measure_latency(m, (8,), dtype="float8")
    with pytest.raises(ValueError, match="latency_batch"):
        measure_latency(m, (8,), batch=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="latency_device: 'cuda'"):
            measure_latency(m, (8,), device="cuda")


class FixedLogits(nn.Module):
    """Returns the logits row stored for each input index (x holds the index)."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", logits)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.logits[x.long()]


def test_evaluate_matches_numpy_and_sklearn():
    g = torch.Generator().manual_seed(0)
    n, nc = 203, 7
    logits = torch.randn(n, nc, generator=g)
    y = torch.randint(0, nc, (n,), generator=g)
    y[:60] = logits[:60].argmax(1)                               # some right answers
    model = FixedLogits(logits).train()
    idx = torch.arange(n)
    loader = [(idx[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]
    r = evaluate(model, loader, nc)
    pred = logits.argmax(1)
    assert r["top1"] == pytest.approx(100 * (pred == y).float().mean().item())
    top5 = (logits.topk(5, 1).indices == y[:, None]).any(1).float().mean().item()
    assert r["top5"] == pytest.approx(100 * top5)
    assert r["f1"] == pytest.approx(100 * f1_score(y.numpy(), pred.numpy(), average="macro"))
    assert model.training


def test_evaluate_top5_is_none_below_five_classes_and_f1_skips_absent_classes():
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]])
    y = torch.tensor([0, 1, 0])                                  # classes 2, 3 never occur
    r = evaluate(FixedLogits(logits), [(torch.arange(3), y)], 4)
    assert r["top5"] is None
    assert r["top1"] == pytest.approx(200 / 3)
    assert r["f1"] == pytest.approx(100 * f1_score([0, 1, 0], [0, 1, 1], average="macro"))


def _ddp_eval_worker(rank: int, world: int, store_path: str, logits, y, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    try:
        idx = torch.arange(len(y))[rank::world]                       # each rank evaluates its shard
        r = evaluate(FixedLogits(logits), [(idx, y[idx])], logits.shape[1])
        out[rank] = torch.tensor([r["top1"], r["top5"], r["f1"]], dtype=torch.float64)
    finally:
        dist.destroy_process_group()


def test_evaluate_sums_counts_over_ranks_under_torch_distributed(tmp_path):
    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(41, 6, generator=g), torch.randint(0, 6, (41,), generator=g)
    whole = evaluate(FixedLogits(logits), [(torch.arange(41), y)], 6)
    out = torch.zeros(2, 3, dtype=torch.float64).share_memory_()
    mp.start_processes(_ddp_eval_worker, args=(2, str(tmp_path / "store"), logits, y, out), nprocs=2,
                       start_method="fork")
    expect = torch.tensor([whole["top1"], whole["top5"], whole["f1"]], dtype=torch.float64)
    assert torch.allclose(out[0], expect) and torch.allclose(out[1], expect)


def test_train_step_throughput_runs_a_real_step_and_leaves_the_model_alone():
    from rankbench.bench.measure.metrics import train_step_throughput

    m = SmallCNN()
    before = [p.detach().clone() for p in m.parameters()]
    r = train_step_throughput(m, (3, 8, 8), batch=16, device="cpu", dtype="bfloat16", steps=3, warmup=1)
    assert r["images_per_s"] > 0 and r["batch"] == 16 and r["dtype"] == "bfloat16"
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
