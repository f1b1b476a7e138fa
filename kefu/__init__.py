"""kefu (客服): a self-hosted customer-service messaging hub for connected products."""

__version__ = "0.1.0"
