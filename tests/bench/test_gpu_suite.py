"""`bash bench/gpu.sh --small` runs the GPU suite end to end on a CPU: the first GPU at
hand then only has to run one command. The small run is float32, so JAX and the
PyTorch peer must agree on the logits (an independent implementation: HF modules)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_gpu_suite_small_runs_and_agrees_with_the_peer(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    out = subprocess.run(["bash", "bench/gpu.sh", "--small", "--batches", "2", "--settings",
                          "none", "llava15-duet-64", "--out", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "dot_product_attention compiled to:" in out.stdout
    report = json.loads((tmp_path / "prefill_small.json").read_text())
    assert report["jax_attention_kernel"] in ("xla", "cudnn")
    assert set(report["results"]) == {"b2/none", "b2/llava15-duet-64"}
    for entry in report["results"].values():
        assert entry["max_abs_logit_diff"] < 1e-3, entry
        assert entry["argmax_agree"] == 1.0
        for impl in ("jax", "torch"):
            assert entry[impl]["ttft_s"] > 0 and entry[impl]["gflops"] > 0
    # the reduced run does less work than the unreduced one (FLOPs per batch)
    assert report["results"]["b2/llava15-duet-64"]["flops"] < report["results"]["b2/none"]["flops"]
