"""Video out of the loop: decoding each block as it is final (``stream``) and writing MP4/WebM (``writer``)."""
