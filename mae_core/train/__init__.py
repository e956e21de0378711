"""Training engines (pretraining now; fine-tuning and linear probing build on the same pieces)."""
