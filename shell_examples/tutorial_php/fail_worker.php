<?php
// A worker whose jobs fail: reverse_fail reports a status, then fails (WORK_FAIL).
declare(strict_types=1);
require __DIR__ . '/servers.php';

$worker = new GearmanWorker();
$worker->addServers(gearman_servers());
$worker->addFunction('reverse_fail', function (GearmanJob $job): ?string {
    echo 'Received job: ', $job->handle(), ", failing it\n";
    $job->sendStatus(1, 2);
    $job->sendFail();
    return null;
});
while ($worker->work()) {
}
