"""The stages of task causal-lm that differ in kind from the encoder tasks' (see compress/tasks/causal_lm.py):
distillation on generated text (distill.py), export with past key/values (export.py), generation timing
(bench.py), and the text they share (text.py)."""
