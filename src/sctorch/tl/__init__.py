"""Tools: the methods (GenoMap, TCER, stImpute, scRobust)."""

__all__: list[str] = []
