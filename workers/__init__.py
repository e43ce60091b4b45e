"""lrkv.workers: one trial — data, the GPT model, training and its metrics record."""
