"""The worker side: the chunk loop, the serve loop of a process or thread, the initializer."""
