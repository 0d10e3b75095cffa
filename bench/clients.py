"""Issue 28's check on a real run: every variant folder of RUN_DIR loaded as is in sentence-transformers (ONNX
backend), Optimum (ORTModelForFeatureExtraction), transformers.js (Node) and OpenVINO, each compared with the
bundle through plain onnxruntime (export/embed.py); plus the bundle's padding and max lengths. One JSON line a
variant on stdout.

    python -m bench.clients runs/quickstart
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RUN = Path(sys.argv[1]).resolve()  # the run directory
TEXTS = ["a quiet, moving film", "great cast", "the plot never finds its footing, but the actors are wonderful to watch"]
spec = importlib.util.spec_from_file_location("embed_example", ROOT / "export" / "embed.py")
ex = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ex)


def cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min()

variants = sorted(p for p in (RUN / "artifacts").iterdir() if p.name.endswith(".onnx") and p.is_dir())
js = RUN.parent / "tjs.mjs"
js.write_text("import { pipeline } from '@huggingface/transformers';\n"
              "const out = {};\n"
              f"for (const v of {json.dumps([str(v) for v in variants])}) {{ try {{\n"
              "  const extractor = await pipeline('feature-extraction', v);\n"
              f"  out[v] = (await extractor({json.dumps(TEXTS)}, {{ pooling: 'mean', normalize: true }})).tolist();\n"
              "} catch (e) { out[v] = String(e).slice(0, 300); } }\nconsole.log(JSON.stringify(out));\n")
nm = RUN.parent / "node_modules"
if not nm.exists():
    nm.symlink_to(ROOT / ".venv" / "node_modules", target_is_directory=True)
proc = subprocess.run(["node", js.name], cwd=RUN.parent, capture_output=True, text=True, timeout=900)
tjs = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {}
if proc.returncode:
    print("node failed", proc.stderr[-500:])
rows = []
for v in variants:
    info = json.loads((v / "compress.json").read_text())
    ref = ex.embed(v, TEXTS)
    row = {"variant": v.name, "precision": info.get("precision"), "runtimes": (info.get("runtimes") or {}).get("note") if isinstance(info.get("runtimes"), dict) else info.get("runtimes")}
    try:
        from sentence_transformers import SentenceTransformer
        m = SentenceTransformer(str(v), backend="onnx")
        row["sentence-transformers"] = 1 - cos(m.encode(TEXTS), ref)
    except Exception as e:
        row["sentence-transformers"] = f"FAIL {type(e).__name__}: {str(e)[:120]}"
    try:
        from optimum.onnxruntime import ORTModelForFeatureExtraction
        from transformers import AutoTokenizer
        m, tok = ORTModelForFeatureExtraction.from_pretrained(v), AutoTokenizer.from_pretrained(v)
        enc = tok(TEXTS, padding=True, return_tensors="pt")
        h = m(**enc).last_hidden_state.detach().numpy()
        mask = enc["attention_mask"].numpy()[..., None]
        pooled = (h * mask).sum(1) / mask.sum(1)
        row["optimum"] = 1 - cos(pooled, ref)
    except Exception as e:
        row["optimum"] = f"FAIL {type(e).__name__}: {str(e)[:120]}"
    got = tjs.get(str(v))
    row["transformers.js"] = (1 - cos(got, ref)) if isinstance(got, list) else f"FAIL {got}"
    try:
        import openvino as ov
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(v)
        enc = tok(TEXTS, padding=True, return_tensors="np")
        core = ov.Core()
        comp = core.compile_model(core.read_model(str(v / info.get("model", "model.onnx"))), "CPU")
        names = [i.get_any_name() for i in comp.inputs]
        out = comp({n: enc[n].astype(np.int64) for n in names if n in enc})
        emb = out[comp.output("embedding")]
        row["openvino"] = 1 - cos(emb, ref)
    except Exception as e:
        row["openvino"] = f"FAIL {type(e).__name__}: {str(e)[:100]}"
    tokj = json.loads((v / "tokenizer.json").read_text())
    row["padding"] = (tokj.get("padding") or {}).get("strategy")
    lens = {"compress.json": info.get("max_length"),
            "tokenizer.json": (tokj.get("truncation") or {}).get("max_length"),
            "tokenizer_config.json": json.loads((v / "tokenizer_config.json").read_text()).get("model_max_length")}
    if (v / "sentence_bert_config.json").exists():
        lens["sentence_bert_config.json"] = json.loads((v / "sentence_bert_config.json").read_text()).get("max_seq_length")
    row["max_lengths"] = lens
    row["size_mb"] = round(sum(p.stat().st_size for p in (v / "onnx").glob("model.onnx*")) / 1e6, 1)
    rows.append(row)
    print(json.dumps(row, default=str), flush=True)
