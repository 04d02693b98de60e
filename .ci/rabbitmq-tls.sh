#!/usr/bin/env bash
# Give the local RabbitMQ a TLS listener on 127.0.0.1:5671 with a test CA made here, for the
# AMQP-over-TLS tests. Idempotent: the certificates are made once, the configuration is
# appended once, and RabbitMQ is restarted only when 5671 is not already listening.
# Prints the variables the tests read (eval "$(.ci/rabbitmq-tls.sh)"):
#   TEST_AMQPS_URL, TEST_AMQPS_CA, TEST_AMQPS_CLIENT_CERT, TEST_AMQPS_CLIENT_KEY,
#   TEST_AMQPS_EXTERNAL_URL (certificate login: the client certificate's CN, guest)
# Everything else goes to standard error.
set -euo pipefail

dir=${RABBITMQ_TLS_DIR:-/etc/rabbitmq/ects-test-tls}
conf=${RABBITMQ_CONF:-/etc/rabbitmq/rabbitmq.conf}
say() { printf '%s\n' "$*" >&2; }
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ ! -s "$dir/server.pem" ] || [ ! -s "$dir/client.pem" ]; then
  say "rabbitmq-tls: making a test CA, server and client certificates in $dir"
  mkdir -p "$dir"
  (
    cd "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=ECTS test CA" \
      -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
      -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile server.ext -out server.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=guest" \
      -keyout client.key -out client.csr 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile client.ext -out client.pem 2>/dev/null
    rm -f server.csr client.csr server.ext client.ext
  )
  chown -R rabbitmq:rabbitmq "$dir" 2>/dev/null || true
  chmod 0644 "$dir"/*.pem
  chmod 0640 "$dir"/*.key
fi

if ! grep -q '^listeners.ssl.default' "$conf" 2>/dev/null; then
  say "rabbitmq-tls: adding the TLS listener to $conf"
  cat >>"$conf" <<CONF
# Added by .ci/rabbitmq-tls.sh (test CA only; never for production).
listeners.ssl.default = 127.0.0.1:5671
ssl_options.cacertfile = $dir/ca.pem
ssl_options.certfile = $dir/server.pem
ssl_options.keyfile = $dir/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
CONF
fi

# Certificate login (SASL EXTERNAL, the client certificate's CN as the broker user) for
# the test of `?auth_mechanism=external`: the plugin, and the mechanisms offered.
restart=no
if ! grep -q '^auth_mechanisms.3 = EXTERNAL' "$conf" 2>/dev/null; then
  say "rabbitmq-tls: offering SASL EXTERNAL (certificate login) in $conf"
  rabbitmq-plugins enable --offline rabbitmq_auth_mechanism_ssl >/dev/null 2>&1 \
    || rabbitmq-plugins enable rabbitmq_auth_mechanism_ssl >/dev/null 2>&1 || true
  cat >>"$conf" <<CONF
# Added by .ci/rabbitmq-tls.sh: certificate login for the tests.
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = AMQPLAIN
auth_mechanisms.3 = EXTERNAL
ssl_cert_login_from = common_name
CONF
  restart=yes
fi

if [ "$restart" = yes ] || ! tcp_open 5671; then
  say "rabbitmq-tls: restarting RabbitMQ to open 5671"
  if tcp_open 5672; then rabbitmqctl stop >/dev/null 2>&1 || true; fi
  for _ in $(seq 30); do tcp_open 5672 || break; sleep 1; done
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for port in 5672 5671; do
    ok=no
    for _ in $(seq 120); do
      if tcp_open "$port"; then ok=yes; break; fi
      sleep 1
    done
    if [ "$ok" = no ]; then
      say "FATAL: RabbitMQ is not reachable on 127.0.0.1:$port after 120s"
      exit 1
    fi
  done
fi

echo "export TEST_AMQPS_URL=amqps://guest:guest@localhost:5671/%2f"
echo "export TEST_AMQPS_CA=$dir/ca.pem"
echo "export TEST_AMQPS_CLIENT_CERT=$dir/client.pem"
echo "export TEST_AMQPS_CLIENT_KEY=$dir/client.key"
echo "export TEST_AMQPS_EXTERNAL_URL='amqps://localhost:5671/%2f?auth_mechanism=external'"
