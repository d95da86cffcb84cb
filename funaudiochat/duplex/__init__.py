"""Full-duplex conversation: two-stream timelines for training (more to come: model, engine)."""
