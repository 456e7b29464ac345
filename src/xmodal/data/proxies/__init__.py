"""The alignment proxies (stage 2's source side): `proxy_features` in `features`, the sources in
`images`, `text` and `npz`, the shared sampling in `sampling`."""

from .features import ProxySource, cache_path, proxy_features
from .sampling import sample_indices

__all__ = ["ProxySource", "cache_path", "proxy_features", "sample_indices"]
