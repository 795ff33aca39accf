"""stImpute (Zeng et al. 2024, Commun Biol 7:1271): one home for the method.

- ``_module``: the torch modules (autoencoder, GraphSAGE over genes, reliability MLP, loss);
- ``_config``: :class:`StImputeConfig`, the settings, with the presets ``"default"`` and
  ``"paper"`` (the authors' code) as named instances;
- ``_transfer``: the default predictor (k-NN + ridge transfer, inner gene CV) and the
  held-out reliability (numpy / scikit-learn only);
- ``_graph``: gene similarity, the top-k gene graph (eqs. 4–6), the authors' distance graph;
- ``_data``: gene-name matching, the paper's normalisation, mini-batches;
- ``_train``: the training steps, each through :func:`sctorch.models.fit`;
- ``_model``: :class:`StImputeModel` (``fit``, ``predict``, ``cross_validate``, ``save``/``load``);
- ``_cv``: the k-fold cross-validation over the shared genes.

The public functions are :func:`sctorch.tl.stimpute`, :func:`sctorch.tl.stimpute_cv` and
:func:`sctorch.tl.stimpute_gene_graph`; the model is ``sctorch.models.StImputeModel``.
"""

from ._config import StImputeConfig

__all__ = ["StImputeConfig"]
