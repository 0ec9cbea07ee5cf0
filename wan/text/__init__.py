"""Text conditioning: Wan's umT5 encoder and its tokenizer (``umt5``)."""
