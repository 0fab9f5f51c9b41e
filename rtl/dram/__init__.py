from .bank import Bank, BankReady, BankError

__all__ = ["Bank", "BankReady", "BankError"]
