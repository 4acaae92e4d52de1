<?php
// Hello world, the worker: registers "reverse" and answers each job with its workload
// reversed. Usage: php hello_worker.php
declare(strict_types=1);
require __DIR__ . '/servers.php';

$worker = new GearmanWorker();
$worker->addServers(gearman_servers());
$worker->addFunction('reverse', fn (GearmanJob $job): string => strrev($job->workload()));
while ($worker->work()) {
}
