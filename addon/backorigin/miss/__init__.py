"""The miss path: the store probe, one origin fetch per object, its checks, the fill, the answer and its delivery."""
