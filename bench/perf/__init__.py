"""Performance scripts: speed and memory of the store, oracle plumbing, thumbnails and the student."""
