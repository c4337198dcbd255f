"""Modelling stages: transfer views of the data, item text embeddings, training, evaluation, the transfer-gain
report and the top-K export."""
