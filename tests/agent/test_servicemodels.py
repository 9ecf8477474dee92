import botocore.exceptions
import botocore.session
import pytest

from agent._servicemodels import service_model


@pytest.mark.parametrize("service", ["deadline", "logs"])
def test_the_model_a_session_reads(service: str) -> None:
    # The same description as botocore's session gives (the latest version, the SDK
    # extras merged in), read without listing every service on the search path.
    session_model = botocore.session.get_session().get_service_model(service)
    assert service_model(service)._service_description == session_model._service_description
    assert service_model(service) is service_model(service)


def test_an_unknown_service_is_refused() -> None:
    with pytest.raises(botocore.exceptions.DataNotFoundError):
        service_model.__wrapped__("no-such-service")
