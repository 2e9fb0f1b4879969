"""``task: tensor``: numpy arrays in, class logits out."""
