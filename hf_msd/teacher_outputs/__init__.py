"""Teacher outputs computed once: the fingerprinted cache and its fingerprints."""
