"""The model among others: timm and transformers weights converted both ways, and the Hub repository with its card."""
