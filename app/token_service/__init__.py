"""The reference token service for admins (optional extra ``token-service``): see ``service.py``."""
