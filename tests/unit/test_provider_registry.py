"""The provider registry is the one list: the documents, the CRD enum, the examples and
`dfm send` all follow it, and every provider's own sample, signed by its own signer, verifies."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from multidict import CIMultiDict

from dfm import provider_docs
from dfm.manifests import load_documents, secrets, webhook_sources
from dfm.send import build_request
from dfm_operator.crds import all_crds
from webhook_server.config import (
    VERIFICATION_OPTIONAL_FIELDS,
    Provider,
    SecretSource,
    SourceConfig,
    VerificationConfig,
)
from webhook_server.verify import PROVIDERS, Verified
from webhook_server.verify.forms import query_value
from webhook_server.verify.registry import Signing

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
# The providers that came before the registry documented themselves elsewhere in the README.
ORIGINAL = {"github", "stripe", "standard", "shopify", "slack", "highlevel", "hmac", "jwt"}


def test_the_readme_table_is_the_registry() -> None:
    text = (ROOT / "README.md").read_text()
    assert provider_docs.render_readme(text) == text, "README.md drifted: run make generate"
    for provider in Provider:
        assert f"| `{provider.value}` |" in text


def test_the_receiver_docs_have_the_registry_sections() -> None:
    text = (ROOT / "docs" / "receiver.md").read_text()
    assert provider_docs.render_receiver_docs(text) == text, "receiver.md drifted: make generate"


def test_a_document_without_markers_is_an_error_not_a_silent_pass() -> None:
    with pytest.raises(ValueError, match="marker"):
        provider_docs.render_readme("no markers here")


def test_the_crd_enum_is_every_provider() -> None:
    crd = next(c for c in all_crds() if c["spec"]["names"]["kind"] == "WebhookSource")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["properties"]["spec"]["properties"]["provider"]["enum"] == [
        p.value for p in Provider
    ]


def test_every_field_a_provider_reads_is_an_optional_verification_field() -> None:
    for spec in PROVIDERS.values():
        assert spec.fields <= set(VERIFICATION_OPTIONAL_FIELDS)


@pytest.mark.parametrize("provider", sorted(set(Provider) - {Provider(p) for p in ORIGINAL}))
def test_every_new_provider_has_docs_and_an_example(provider: Provider) -> None:
    assert PROVIDERS[provider].docs.startswith("### ")
    sources = [s for _, s in webhook_sources(load_documents([EXAMPLES]))]
    assert any(s.spec.provider is provider for s in sources), f"no example for {provider}"


def _example_sources() -> dict[Provider, tuple[SourceConfig, str | None]]:
    """Each example source, as `dfm send` sees it, with its demo private key if it has one."""
    from dfm.local import demo_private_key, local_secrets
    from dfm_operator.builders.receiver_config import build_source_config

    docs = load_documents([EXAMPLES])
    found = secrets(docs)
    configs: dict[Provider, tuple[SourceConfig, str | None]] = {}
    for doc, source in webhook_sources(docs):
        config = build_source_config(source, local_secrets(doc, source, found))
        key = demo_private_key(doc.file, config)
        configs.setdefault(config.provider, (config, str(key) if key else None))
    return configs


@pytest.mark.parametrize(
    "provider", [p for p in Provider if PROVIDERS[p].signing is not Signing.BEARER_TOKEN]
)
def test_dfm_send_signs_each_sample_so_that_the_receiver_verifies_it(
    provider: Provider, tmp_path: Path
) -> None:
    examples = _example_sources()
    if provider in examples and (
        examples[provider][1] or PROVIDERS[provider].signing is Signing.SECRET
    ):
        source, key = examples[provider]
    else:  # highlevel (HighLevel's own keys) and hmac (no Secret beside it in every example)
        source, key = _source_with_fresh_key(provider, tmp_path)
    now = time.time()
    sample, expected_id = PROVIDERS[provider].sample(now, "fixed-id")
    body, headers, query = build_request(source, sample, "fixed-id", private_key=key, now=now)
    secrets_ = [s.value.encode() for s in source.verification.secrets if s.value]
    result = PROVIDERS[provider].verify(
        CIMultiDict(headers), body, secrets_, source.verification, now, query
    )
    assert isinstance(result, Verified), result
    assert result.event_id == expected_id or provider in (Provider.HMAC, Provider.TOKEN)
    # Twilio signs JSON bodies through the URL; its form sample needs no query.
    assert query_value(query, "bodySHA256") is None


def _source_with_fresh_key(provider: Provider, tmp_path: Path) -> tuple[SourceConfig, str | None]:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if provider is Provider.HIGHLEVEL:
        private = ed25519.Ed25519PrivateKey.generate()
        pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        key_file = tmp_path / "ghl.pem"
        key_file.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        config = VerificationConfig(public_key=pem.decode())
        return SourceConfig(name="s", provider=provider, verification=config), str(key_file)
    settings: dict[str, Any] = {"secrets": [SecretSource(value="a-long-enough-secret-value")]}
    if provider is Provider.HMAC:
        settings["header"] = "X-Sig"
    return SourceConfig(
        name="s", provider=provider, verification=VerificationConfig(**settings)
    ), None


def test_the_examples_are_valid_yaml_streams() -> None:
    for file in EXAMPLES.glob("*.yaml"):
        assert list(yaml.safe_load_all(file.read_text()))


@pytest.mark.parametrize(
    ("exposure", "verification", "expected"),
    [
        (
            {"ingress": {"host": "hooks.example.com", "tlsSecretName": "tls"}},
            {},
            "https://hooks.example.com/hooks/sms/tw",
        ),
        ({"ingress": {"host": "hooks.example.com"}}, {}, "http://hooks.example.com/hooks/sms/tw"),
        (
            {"ingress": {"host": "hooks.example.com", "tlsSecretName": "tls"}},
            {"publicUrl": "https://lb.example.net:8443/twilio"},
            "https://lb.example.net:8443/twilio",
        ),
    ],
)
def test_the_operator_tells_the_receiver_the_url_twilio_calls(
    exposure: dict[str, Any], verification: dict[str, Any], expected: str
) -> None:
    from dfm_operator.api import WebhookSource
    from dfm_operator.builders.webhooksource import ReceiverInputs, build_receiver_config
    from dfm_operator.settings import OperatorSettings

    source = WebhookSource.model_validate(
        {
            "apiVersion": "dfm.dev/v1alpha1",
            "kind": "WebhookSource",
            "metadata": {"name": "tw", "namespace": "sms"},
            "spec": {
                "provider": "twilio",
                "verification": {"secretRef": {"name": "twilio"}, **verification},
                "exposure": exposure,
            },
        }
    )
    config = build_receiver_config(source, ReceiverInputs(settings=OperatorSettings()))
    assert config.sources[0].verification.public_url == expected
    assert f"publicUrl: {expected}" in config.dump_yaml()
