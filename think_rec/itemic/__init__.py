"""The itemic tokenizer: items -> embeddings (``encoders``, ``fusion``) -> residual quantisation
(``rq_kmeans``, ``rq_vae``) -> unique semantic IDs (``collisions``, ``codebook``); ``build`` runs it all.

Kept import-free so ``from think_rec.itemic.codebook import SIDCodebook`` does not load torch."""
