"""The backend on a tensor-parallel model (PyTorch DTensor, gloo, CPU processes): each rank runs
its own heads' plans, and the sharded model computes what the unsharded one does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tiny_models import FAMILIES, tiny_inputs, tiny_model

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch built without distributed")

FAMILIES_TP = ("llama", "qwen2", "gemma3")
PROMPT = 256
MIN_LEN = 64


def per_head_db(family: str, path: str) -> str:
    """A database for the tiny model whose four heads each keep different keys, so a rank that
    took another rank's plans would compute something else."""
    from mcompile.pattern_db import Frac, HeadEntry, LayerEntry, ModelIdentity, PatternDB, save_db

    cfg = FAMILIES[family]()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    identity = ModelIdentity(num_layers=cfg.num_hidden_layers, num_heads=cfg.num_attention_heads,
                             num_kv_heads=cfg.num_key_value_heads, head_dim=head_dim, name=f"tiny-{family}")
    heads = [HeadEntry("sliding_window", {"window": 16}), HeadEntry("a_shape", {"n_init": 64, "n_local": 32}),
             HeadEntry("sliding_window", {"window": Frac(0.25)}), HeadEntry("dense")]
    layer_types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
    layers = [LayerEntry.sliding(cfg.sliding_window) if kind == "sliding_attention" else LayerEntry.searched(heads)
              for kind in layer_types]
    save_db(PatternDB.build(identity, layers), path)
    return path


def _compiled(model, db: str):
    model.compile(backend="minference", options={"db": db, "min_len": MIN_LEN, "dense_tail": 0})
    return model


def _check_family(family: str, rank: int, world: int, tmp: str) -> None:
    import mcompile
    from mcompile import reporting

    db = per_head_db(family, os.path.join(tmp, f"{family}.json"))
    ids, _ = tiny_inputs(1, PROMPT)
    torch._dynamo.reset()
    with torch.no_grad():
        dense = tiny_model(family)(ids, use_cache=False).logits
        whole_model = _compiled(tiny_model(family), db)
        whole = whole_model(ids, use_cache=False).logits
        reporting.reset()
        mesh = dist.device_mesh.init_device_mesh("cpu", (world,))
        sharded = _compiled(mcompile.shard_heads(tiny_model(family), mesh), db)
        out = sharded(ids, use_cache=False).logits
    assert (whole - dense).abs().max() > 1e-2, "the plan must drop keys"
    torch.testing.assert_close(out, whole, rtol=1e-4, atol=1e-4)
    rows = [r for r in mcompile.report().rows if r.decision == "sparse"]
    local = FAMILIES[family]().num_attention_heads // world
    assert rows and all(r.heads == local and r.shard == f"rank {rank}/{world}: heads {rank * local}-"
                        f"{rank * local + local - 1}" for r in rows), str(mcompile.report())
    # generate with a cache: a sparse prefill, then decode steps left as they are
    with torch.no_grad():
        new = sharded.generate(ids, max_new_tokens=4, do_sample=False)
        ref = whole_model.generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(new, ref), (new[:, PROMPT:], ref[:, PROMPT:])


def _check_transformers_tp_plan(rank: int, world: int, tmp: str) -> None:
    """transformers' own sharding (``from_pretrained(..., tp_plan="auto")``), whose all-reduce
    lands in its output buffer by an in-place copy the rewrite must keep."""
    import transformers

    import mcompile
    from mcompile import reporting

    path = os.path.join(tmp, "tiny-llama")
    if rank == 0:
        tiny_model("llama").save_pretrained(path)
    dist.barrier()
    db = per_head_db("llama", os.path.join(tmp, f"llama-{rank}.json"))
    ids, _ = tiny_inputs(1, PROMPT)
    torch._dynamo.reset()
    with torch.no_grad():
        whole = _compiled(transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval(), db)
        ref = whole(ids, use_cache=False).logits
        reporting.reset()
        sharded = transformers.AutoModelForCausalLM.from_pretrained(path, tp_plan="auto", attn_implementation="sdpa")
        out = _compiled(sharded.eval(), db)(ids, use_cache=False).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert {r.shard for r in mcompile.report().rows} == {f"rank {rank}/{world}: heads {2 * rank}-{2 * rank + 1}"}


def _worker(rank: int, world: int, tmp: str, families: tuple[str, ...]) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    try:
        for family in families:
            _check_family(family, rank, world, tmp)
        _check_transformers_tp_plan(rank, world, tmp)
    except BaseException:
        with open(os.path.join(tmp, f"failed.{rank}"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def _run(world: int, tmp, families) -> None:
    try:
        mp.spawn(_worker, args=(world, str(tmp), tuple(families)), nprocs=world)
    except mp.ProcessRaisedException as exc:
        failures = sorted(tmp.glob("failed.*"))
        raise AssertionError(failures[0].read_text() if failures else str(exc)) from None


def test_sharded_model_runs_each_ranks_heads_and_equals_the_whole_model(tmp_path):
    _run(2, tmp_path, FAMILIES_TP)


def test_a_degree_that_splits_kv_groups_is_refused():
    import mcompile

    class OneRank4:
        def size(self):
            return 4
    with pytest.raises(mcompile.TensorParallelError, match="degree 4 would split KV groups: the model has 4 query / 2 KV"):
        mcompile.shard_heads(tiny_model("llama"), OneRank4())


def test_a_database_whose_heads_do_not_match_names_the_degree(tmp_path):
    """Rank 0 of degree 2 holds 2 of the model's heads; a database for a model with 2 heads in
    all (not 4) is refused, naming the degree and both head counts."""
    from mcompile.pattern_db import FingerprintMismatchError, HeadEntry, LayerEntry, ModelIdentity, PatternDB, save_db

    other = ModelIdentity(num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16, name="other")
    path = str(tmp_path / "other.json")
    save_db(PatternDB.build(other, [LayerEntry.searched([HeadEntry("dense")] * 2)] * 2), path)
    ids, _ = tiny_inputs(1, 128)
    torch._dynamo.reset()
    model = tiny_model("llama")
    model.compile(backend="minference", options={"db": path, "min_len": MIN_LEN,
                                                 "tensor_parallel": {"degree": 2, "rank": 0}})
    # unsharded weights, told they are one of two shards: the sites hold 4 heads, the model 8
    with pytest.raises(Exception, match=r"Under tensor parallel degree 2: each rank's sites hold 4 query / 2 KV "
                                        r"heads, so the model has 8 / 4") as info:
        with torch.no_grad():
            model(ids, use_cache=False)
    assert isinstance(info.value, FingerprintMismatchError) or "FingerprintMismatchError" in str(info.value)


@pytest.mark.parametrize("option", [{"degree": 2}, {"degree": 2, "rank": 2}, "tp", 3])
def test_bad_tensor_parallel_options_name_the_option(option):
    import mcompile

    torch._dynamo.reset()
    model = tiny_model("llama")
    model.compile(backend="minference", options={"tensor_parallel": option})
    with pytest.raises(Exception, match="minference option 'tensor_parallel'"):
        with torch.no_grad():
            model(tiny_inputs(1, 32)[0], use_cache=False)
    assert mcompile.OptionError


def _run_tp_benchmark(nproc: int, out, *extra: str) -> dict:
    from test_prefill_bench import ROOT
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                    str(ROOT / "benchmarks" / "prefill_tp.py"), "--device", "cpu", "--shape", "tiny", "--layers", "2",
                    "--lengths", "512", "--min-len", "256", "--repeats", "1", "--out", str(out), *extra],
                   check=True, env=env, timeout=600)
    return json.loads(out.read_text())


def test_prefill_tp_benchmark_runs_sharded_on_cpu_processes(tmp_path):
    """benchmarks/prefill_tp.py under torchrun (gloo): one process, then two whose rows hold
    both ranks' times, the sparse decisions of rank 0's half of the heads, and the speedup
    against the one-process run."""
    one = _run_tp_benchmark(1, tmp_path / "one.json")
    two = _run_tp_benchmark(2, tmp_path / "two.json", "--baseline", str(tmp_path / "one.json"))
    assert [(r["variant"], r["n"], r["world"]) for r in one["rows"]] == [("dense", 512, 1), ("default", 512, 1)]
    assert [(r["variant"], r["n"], r["world"]) for r in two["rows"]] == [("dense", 512, 2), ("default", 512, 2)]
    for row in one["rows"] + two["rows"]:
        assert row["finite"] and not row["oom"] and row["ms"] > 0
        assert row["ms_extrapolated"] == pytest.approx(row["ms"] * 32 / 2)
    dense, sparse = two["rows"]
    assert len(sparse["ms_per_rank"]) == 2 and sparse["ms"] == max(sparse["times_ms"])
    assert set(dense["decisions"]) == {"dense: plan: dense"} and set(sparse["decisions"]) == {"sparse"}
    assert sparse["shard"] == "rank 0/2: heads 0-1" and one["rows"][1]["shard"] in (None, "")
    assert sparse["speedup_vs_baseline"] == pytest.approx(one["rows"][1]["ms"] / sparse["ms"])
