"""Text modality building blocks: tokenization (`tokenizer`), on-device text
views for contrastive pretraining (`views`) and the synonym table of their
synonym substitution (`synonyms`).

Host side: `tokenizer` turns strings into int32 id rows [N, L], padded with 0
at the end. Device side: `views` maps such rows to augmented rows of the same
shape, as pure JAX functions of (key, ids), keyed per example like the image
views (`contrastive_jax.augment.example_keys`).
"""
