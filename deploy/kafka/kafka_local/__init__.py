"""The local single-node Kafka test broker behind ``deploy/kafka/broker.py``, one job per module.

In the order a start goes through them:

* ``defaults``: paths, environment overrides, host, listeners and timeouts;
* ``errors``: ``BrokerError`` and its subclasses;
* ``locks``: the ``flock`` that serialises fetches and starts;
* ``fetch``: Maven copies the jars of ``pom.xml`` into a stamped cache;
* ``java``: the JDK that can run them and the JVM command line;
* ``properties``: ``server.properties`` and ``log4j2.properties``;
* ``tls``: CA and broker certificate with the ``openssl`` CLI;
* ``storage``: a fresh state dir, formatted with a cluster id and SCRAM users;
* ``process``: pid files, ``/proc``, launching detached, signals;
* ``info``: ``BrokerInfo`` and the ``broker.json``/``env`` files;
* ``wire``: a tiny Kafka protocol client (ApiVersions, Metadata);
* ``readiness``: waiting until every listener answers;
* ``lifecycle``: ``start``, ``stop``, ``restart``;
* ``cli``: the ``broker.py`` command line.

Standard library only: ``broker.py`` runs before any virtualenv exists.
"""
