"""Finding peers over DNS: SRV rules (srv, pure) and the dnspython resolver (resolver)."""
