"""Example handlers. A route names one as ``handlers.<module>:<function>``."""
