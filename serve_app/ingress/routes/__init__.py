"""The API's routes, one ``APIRouter`` per kind: ``info`` (the service) and ``jobs`` (the stations' jobs)."""
