"""What several benchmark scripts share (each runs as a script, so this directory is on sys.path)."""

import resource


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
