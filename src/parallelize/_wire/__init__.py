"""What crosses between the caller and a worker: pickling, shared memory, and the messages."""
