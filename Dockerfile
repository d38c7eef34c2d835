# The aifixer image: one image for the worker, beat, Flower and the web endpoints,
# each started with its own command (see docker-compose.yml and deploy/).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# git: the forge adapter clones the GitOps repository and pushes the fix branch.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 10001 aifixer \
 && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin aifixer \
 && install -d -o aifixer -g aifixer /var/lib/aifixer

WORKDIR /app

# Dependencies first, in their own layer, so a code change does not reinstall them.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY pyproject.toml README.md celeryconfig.py beat_schedule.py ./
COPY aifixer ./aifixer
RUN pip install --no-deps .

USER 10001:10001
WORKDIR /home/aifixer
EXPOSE 8000 5555
CMD ["celery", "-A", "aifixer", "worker", "-Q", "polls,model,cluster,notify,scaling", "--loglevel=INFO"]
