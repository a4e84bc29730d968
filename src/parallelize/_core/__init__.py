"""The core: a map as a job, the one scheduler every backend runs under, and its results."""
