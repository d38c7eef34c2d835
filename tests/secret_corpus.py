"""Secret shapes as they turn up in logs, events and manifests: one corpus for every
redaction test (the unit tests of `aifixer.redact` and the scenario that plants them).

Each entry: (name, the text as it appears, the secret part that must never survive).
The values are made up; the shapes are the providers'.
"""

from __future__ import annotations

_HEX32 = "9f86d081884c7d659a2feaa0c55ad015"
_B64 = "c2VjcmV0LXBhc3N3b3JkLWZvci10aGUtZGF0YWJhc2UtcHJvZA"

SECRETS: list[tuple[str, str, str]] = [
    # -- provider-shaped tokens
    (
        "github-pat-classic",
        "cloning with ghp_R7tQx2LmZ9wVb4NcK8sYj3HdF6gPa1Ue0Wi5",
        "ghp_R7tQx2LmZ9wVb4NcK8sYj3HdF6gPa1Ue0Wi5",
    ),
    (
        "github-server-token",
        "token ghs_Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2 expired",
        "ghs_Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2",
    ),
    (
        "github-fine-grained",
        "GH=github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
    ),
    ("gitlab-pat", "push refused for glpat-xT4bQ9vN2mK7pL1zR8wY", "glpat-xT4bQ9vN2mK7pL1zR8wY"),
    (
        "slack-bot",
        "slack: invalid_auth for xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOp",
        "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOp",
    ),
    (
        "slack-webhook",
        "posting to https://hooks.slack.com/services/T0123ABCD/B0456EFGH/aBcDeFgHiJkLmNoPqRsTuVwX",
        "T0123ABCD/B0456EFGH/aBcDeFgHiJkLmNoPqRsTuVwX",
    ),
    (
        "stripe-live",
        "stripe error for key sk_live_51HxYzAbCdEfGhIjKlMnOpQr",
        "sk_live_51HxYzAbCdEfGhIjKlMnOpQr",
    ),
    (
        "stripe-restricted",
        "using rk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "rk_live_4eC39HqLyjWDarjtT1zdp7dc",
    ),
    (
        "stripe-webhook",
        "signature mismatch whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    ),
    (
        "aws-key-id",
        "aws: AccessDenied for AKIAIOSFODNN7EXAMPLE on s3://bucket",
        "AKIAIOSFODNN7EXAMPLE",
    ),
    ("aws-session-id", "assumed ASIAJEXAMPLEXEG2JICE", "ASIAJEXAMPLEXEG2JICE"),
    (
        "aws-secret-bare",
        "secret access key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY rejected",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ),
    (
        "aws-secret-env",
        "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ),
    (
        "google-api-key",
        "maps quota exceeded for AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
        "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
    ),
    (
        "google-oauth",
        "Authorization failed: ya29.a0AfH6SMBx3kq9zLwPqRtYvU2nM8cD4eF",
        "ya29.a0AfH6SMBx3kq9zLwPqRtYvU2nM8cD4eF",
    ),
    (
        "openai",
        "openai: 401 for sk-proj-Abc123Def456Ghi789Jkl012",
        "sk-proj-Abc123Def456Ghi789Jkl012",
    ),
    (
        "anthropic",
        "using sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv",
        "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv",
    ),
    (
        "huggingface",
        "HF hub 401 hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345",
        "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345",
    ),
    ("twilio-account", "twilio 20003 for AC" + _HEX32, "AC" + _HEX32),
    ("twilio-api-key", "twilio key SK" + _HEX32, "SK" + _HEX32),
    (
        "sendgrid",
        "mail: 403 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",
        "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",
    ),
    (
        "mailgun",
        "mailgun key-3ax6xnjp29jd6fds4gc373sgvjxteol0",
        "key-3ax6xnjp29jd6fds4gc373sgvjxteol0",
    ),
    (
        "npm",
        "npm ERR! 401 npm_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
        "npm_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    ),
    (
        "pypi",
        "upload as pypi-AgEIcHlwaS5vcmcCJDAwMDAwMDAwLTAwMDAtMDAwMC0wMDAwLTAwMDAwMDAwMDAwMAACJXsicGVybWlzc2lvbnMi",
        "pypi-AgEIcHlwaS5vcmcCJDAwMDAwMDAwLTAwMDAtMDAwMC0wMDAwLTAwMDAwMDAwMDAwMAACJXsicGVybWlzc2lvbnMi",
    ),
    (
        "vault",
        "vault: permission denied for hvs.CAESIJlU9JMYEhOPYv4igdhm9PnK",
        "hvs.CAESIJlU9JMYEhOPYv4igdhm9PnK",
    ),
    ("digitalocean", "doctl auth dop_v1_" + _HEX32 * 2, "dop_v1_" + _HEX32 * 2),
    ("shopify", "shopify 401 shpat_" + _HEX32, "shpat_" + _HEX32),
    ("databricks", "databricks dapi" + _HEX32, "dapi" + _HEX32),
    (
        "grafana",
        "grafana 401 glsa_Xq7rT2mN9pL4kW8vB3zY6hJ1cF5dG0sA_e4f5a6b7",
        "glsa_Xq7rT2mN9pL4kW8vB3zY6hJ1cF5dG0sA_e4f5a6b7",
    ),
    (
        "telegram",
        "bot 123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw3 blocked",
        "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw3",
    ),
    (
        "jwt",
        "rejected eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ),
    # -- blocks
    (
        "pem-rsa",
        "key: -----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx4Ul3Yc\n-----END RSA PRIVATE KEY-----",
        "MIIEowIBAAKCAQEAx4Ul3Yc",
    ),
    (
        "pem-pkcs8",
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----",
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
    ),
    (
        "pem-openssh",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU\n-----END OPENSSH PRIVATE KEY-----",
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU",
    ),
    (
        "pem-ec-torn",
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yByx (truncated",
        "MHcCAQEEIBkg4LVWM9nuwNSk3yByx",
    ),
    (
        "pem-pgp",
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\nlQOYBF0PZ8UBCAC5\n-----END PGP PRIVATE KEY BLOCK-----",
        "lQOYBF0PZ8UBCAC5",
    ),
    # -- URLs and connection strings
    (
        "url-postgres",
        "connect failed: postgres://app:Pg-s3cret-42@db.shop.svc:5432/orders",
        "Pg-s3cret-42",
    ),
    ("url-redis", "redis://:r3d1s-pass@redis:6379/0 refused", "r3d1s-pass"),
    ("url-amqp", "amqp://guest:rabbit!pw9@mq:5672// unreachable", "rabbit!pw9"),
    (
        "url-git-token",
        "fatal: https://x-access-token:s3cr3tvalue@github.com/a/b.git",
        "s3cr3tvalue",
    ),
    ("url-query-token", "GET /hook?token=abcDEF123456ghiJKL&x=1", "abcDEF123456ghiJKL"),
    (
        "url-query-sig",
        "https://acct.blob.core.windows.net/c/f?sv=2021&sig=Zm9vYmFyYmF6cXV4MTIz%3D",
        "Zm9vYmFyYmF6cXV4MTIz%3D",
    ),
    ("sentry-dsn", "sentry https://" + _HEX32 + "@o4505.ingest.sentry.io/4505", _HEX32),
    (
        "azure-storage",
        "DefaultEndpointsProtocol=https;AccountName=shop;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq==;EndpointSuffix=core.windows.net",
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq==",
    ),
    (
        "azure-sas",
        "Endpoint=sb://bus.servicebus.windows.net/;SharedAccessKeyName=root;SharedAccessKey=qJ3kd8Lm2Nf9Pz4Rt6Vw1Xy5Ab7Cd0Ef2Gh4Ij6Kl8=",
        "qJ3kd8Lm2Nf9Pz4Rt6Vw1Xy5Ab7Cd0Ef2Gh4Ij6Kl8=",
    ),
    ("jdbc-password", "jdbc:sqlserver://db;user=sa;password=Sql$erver2019", "Sql$erver2019"),
    # -- key=value, JSON, YAML and header forms
    ("env-db-pass", "DB_PASS=hunter2hunter2 port=5432", "hunter2hunter2"),
    ("env-password", "password=Sup3rS3cret!", "Sup3rS3cret!"),
    ("env-secret-key", "DJANGO_SECRET_KEY=django-insecure-7x!kq", "django-insecure-7x!kq"),
    ("env-encryption-key", "ENCRYPTION_KEY=0p3n-s3s4m3-k3y", "0p3n-s3s4m3-k3y"),
    ("env-client-secret", "OAUTH_CLIENT_SECRET: 4f1Xq-clientsecret", "4f1Xq-clientsecret"),
    ("json-api-key", '{"api_key": "abcd1234efgh"}', "abcd1234efgh"),
    ("json-password", '{"user": "svc", "password": "pa55w0rd-x"}', "pa55w0rd-x"),
    ("yaml-token", "  token: tk-7Yb2Qx9Lm4", "tk-7Yb2Qx9Lm4"),
    ("header-bearer", "Authorization: Bearer abcdef.123456", "abcdef.123456"),
    ("header-basic", "sent Basic dXNlcjpwYXNzd29yZDEyMw== to upstream", "dXNlcjpwYXNzd29yZDEyMw=="),
    ("header-api-key", "X-Api-Key: 7c4a8d09ca3762af61e5", "7c4a8d09ca3762af61e5"),
    ("cookie", "Cookie: session_id=s%3AJ8kLm2Np4Qr6St8", "s%3AJ8kLm2Np4Qr6St8"),
    ("passphrase", "GPG_PASSPHRASE='correct horse battery'", "correct horse battery"),
    # -- prose
    ("prose-password-is", "login failed: the password is Winter2024! for admin", "Winter2024!"),
    ("prose-token-was", "retry: token was 5f0c9e2ab7 (expired)", "5f0c9e2ab7"),
    ("prose-secret-set", "the secret set to qz7-Lm3-pW9 by the job", "qz7-Lm3-pW9"),
    # -- random-looking blobs
    ("hex-64", "checksum key " + _HEX32 * 2 + " invalid", _HEX32 * 2),
    ("base64-blob", "decoded " + _B64 + " from vault", _B64),
]
