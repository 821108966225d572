"""The Python client generated from proto/ (grpcio-tools) against a fresh
`paddock dev`: run by tests/tests/python_client.rs, which generates the
client, starts the stack and sets the environment read here."""

import os

import grpc
import pytest

from paddock.authz.v1 import authz_pb2, authz_pb2_grpc
from paddock.identity.v1 import identity_pb2, identity_pb2_grpc

ORG = "organizations/acme"


def channel(service):
    endpoint = os.environ[f"PADDOCK_{service.upper()}_ENDPOINT"]
    return grpc.insecure_channel(endpoint.removeprefix("http://"))


def bearer(token):
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def identity():
    with channel("identity") as ch:
        yield identity_pb2_grpc.IdentityServiceStub(ch)


@pytest.fixture(scope="module")
def authz():
    with channel("authz") as ch:
        yield authz_pb2_grpc.AuthzServiceStub(ch)


@pytest.fixture(scope="module")
def owner(identity):
    """The first owner's key, from CreateOrganization with the bootstrap token."""
    created = identity.CreateOrganization(
        identity_pb2.CreateOrganizationRequest(
            organization_id="acme", owner_email="alice@acme.test"
        ),
        metadata=bearer(os.environ["PADDOCK_BOOTSTRAP_TOKEN"]),
    )
    assert created.organization.name == ORG
    assert created.owner_key_secret.startswith("pdk_")
    return created.owner_key_secret


@pytest.fixture(scope="module")
def developer_key(identity, owner):
    """A key of the owner's that acts with the developer role only."""
    created = identity.CreateApiKey(
        identity_pb2.CreateApiKeyRequest(
            parent=ORG,
            api_key=identity_pb2.ApiKey(display_name="dev", role="developer"),
        ),
        metadata=bearer(owner),
    )
    assert created.secret.startswith("pdk_")
    return created.secret


def test_whoami(identity, owner):
    me = identity.WhoAmI(identity_pb2.WhoAmIRequest(), metadata=bearer(owner))
    assert me.principal.kind == identity_pb2.PRINCIPAL_KIND_MEMBER
    assert me.principal.organization == ORG
    assert me.principal.role == "owner"


def test_create_project(identity, owner):
    created = identity.CreateProject(
        identity_pb2.CreateProjectRequest(
            parent=ORG,
            project_id="web",
            project=identity_pb2.Project(display_name="Web storefront"),
        ),
        metadata=bearer(owner),
    )
    assert created.project.name == f"{ORG}/projects/web"
    assert created.project.display_name == "Web storefront"
    got = identity.GetProject(
        identity_pb2.GetProjectRequest(name=f"{ORG}/projects/web"),
        metadata=bearer(owner),
    )
    assert got.project.display_name == "Web storefront"


def test_check(authz, owner, developer_key):
    allowed = authz.Check(
        authz_pb2.CheckRequest(permission="projects.delete", resource=ORG),
        metadata=bearer(owner),
    )
    assert allowed.allowed
    denied = authz.Check(
        authz_pb2.CheckRequest(permission="projects.delete", resource=ORG),
        metadata=bearer(developer_key),
    )
    assert not denied.allowed


def test_lesser_role_is_denied(identity, developer_key):
    with pytest.raises(grpc.RpcError) as refused:
        identity.DeleteProject(
            identity_pb2.DeleteProjectRequest(name=f"{ORG}/projects/web"),
            metadata=bearer(developer_key),
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "projects.delete" in refused.value.details()


@pytest.mark.parametrize("metadata", [(), bearer("pdk_not_a_key")])
def test_unauthenticated(identity, metadata):
    with pytest.raises(grpc.RpcError) as refused:
        identity.WhoAmI(identity_pb2.WhoAmIRequest(), metadata=metadata)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
