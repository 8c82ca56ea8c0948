"""Stage 3, dataset: the training window's clean days de-duplicated and split into train, validation and
evaluation files with a manifest."""
