"""stImpute (Zeng et al. 2024, Commun Biol 7:1271): one home for the method.

- ``_module``: the torch modules (autoencoder, GraphSAGE over genes, reliability MLP, loss);
- ``_graph``: gene similarity and the top-k gene graph (eqs. 4–6);
- ``_data``: gene-name matching, the paper's normalisation, mini-batches;
- ``_train``: the training steps, each through :func:`sctorch.models.fit`;
- ``_model``: :class:`StImputeModel` (``fit``, ``predict``, ``cross_validate``, ``save``/``load``).

The public functions are :func:`sctorch.tl.stimpute`, :func:`sctorch.tl.stimpute_cv` and
:func:`sctorch.tl.stimpute_gene_graph`; the model is ``sctorch.models.StImputeModel``.
"""
