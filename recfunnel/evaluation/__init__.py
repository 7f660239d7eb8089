"""Offline evaluation on plain numpy/pandas: any model's output, ours or a peer's, is scored the
same way, and nothing here imports TensorFlow or Merlin."""
