"""Lower layers shared by the programs (webhook, issuer, SDS agent, gateway). Nothing here
imports a program; the programs import from here."""
