"""A saved model on image files: predictions in bulk and attention maps, with the folder's own preprocessing."""
